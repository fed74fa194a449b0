"""The hook contract: registration rules, family dispatch and lifecycle order."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from tuner import hookimpl, hookspecs
from tuner.config import resolve_config
from tuner.data.synthetic import write_synthetic_clips
from tuner.errors import ConfigError, PluginError
from tuner.plugins import PluginHost
from tuner.testing.toy import ToyFamily, toy_config
from tuner.train.run import train

ROOT = Path(__file__).resolve().parents[2]


def hook_names() -> list[str]:
    return [
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, f"{hookspecs.PROJECT}_spec")
    ]


def test_every_hook_has_a_test_and_a_docs_section():
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    docs = (ROOT / "docs" / "plugins.md").read_text()
    names = hook_names()
    assert len(names) >= 15
    for name in names:
        assert re.search(rf"def test_hook_{name}(_\w+)?\(", tests), f"no test_hook_{name}"
        assert f"### `{name}`" in docs, f"docs/plugins.md has no section for {name}"


def test_every_hook_has_a_docstring_naming_its_params():
    for name in hook_names():
        fn = getattr(hookspecs, name)
        assert fn.__doc__ and len(fn.__doc__.strip()) > 40, name


def test_plugins_mark_hooks_with_tuner_hookimpl_which_imports_nothing_heavy():
    """The docstring of `tuner.hookspecs` promises ``@tuner.hookimpl``: the package exports the marker, light."""
    import subprocess
    import sys

    assert hookimpl is hookspecs.hookimpl
    code = "import sys, tuner; tuner.hookimpl; assert 'torch' not in sys.modules and 'tuner.plugins' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_core_names_no_model_family_and_imports_no_plugin():
    import ast

    families = {"wan", "flux"}
    for path in (ROOT / "core" / "tuner").rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                assert node.value.lower() not in families, f"{path.name} names a family: {node.value!r}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not [m for m in modules if m.startswith("tuner_")], f"{path.name} imports a plugin"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
    learning_rate: float = 1.0


class _Clash:
    @hookimpl
    def register_config_sections(self, register: Any) -> None:
        register("clash", _Section)


class _NotPydantic:
    @hookimpl
    def register_config_sections(self, register: Any) -> None:
        register("bad", dict)


def test_hook_register_config_sections_enforces_unique_options():
    with pytest.raises(PluginError, match="reuses option 'learning_rate' of section 'train'"):
        PluginHost.build([], extra={"clash": _Clash()})
    with pytest.raises(PluginError, match="non-pydantic model"):
        PluginHost.build([], extra={"bad": _NotPydantic()})
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    assert host.section_owner["toy"] == "toy" and host.section_owner["train"] == "core"


def test_hook_register_model_families_are_unique_and_resolved():
    with pytest.raises(PluginError, match="both register model family 'toy'"):
        PluginHost.build([], extra={"a": ToyFamily(), "b": _SecondToy()})
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    assert host.resolve_family(None) == "toy"
    with pytest.raises(PluginError, match="model_family 'tyo' .*did you mean 'toy'"):
        host.resolve_family("tyo")


class _SecondToy:
    @hookimpl
    def register_model_families(self, register: Any) -> None:
        register("toy", "")


class _Incomplete:
    @hookimpl
    def register_model_families(self, register: Any) -> None:
        register("half", "")


def test_hook_load_model_is_required_of_a_family(tmp_path):
    host = PluginHost.build([], extra={"half": _Incomplete()})
    write_synthetic_clips(tmp_path / "clips", count=1, num_frames=1, width=8, height=8)
    config = resolve_config(
        {
            "data": {"instance_data_dir": str(tmp_path / "clips"), "cache_dir": str(tmp_path / "cache")},
            "train": {"output_dir": str(tmp_path / "o")},
        },
        host,
    )
    with pytest.raises(PluginError, match="'half' .* does not implement load_model"):
        train(config, host)


def test_hook_compute_loss_depends_only_on_the_generator(tmp_path):
    family = ToyFamily()
    host = PluginHost.build([], extra={"toy": family})
    config = resolve_config(toy_config(tmp_path), host)
    bundle = host.load_model(config, torch.device("cpu"))
    batch = {"latents": torch.randn(2, 3, 1, 4, 4), "text": torch.randn(2, 8)}

    def loss(seed: int) -> float:
        return float(host.compute_loss(bundle, batch, torch.Generator().manual_seed(seed), config).loss)

    assert loss(1) == loss(1)
    assert loss(1) != loss(2)


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    @hookimpl
    def on_run_start(self, run: Any) -> None:
        self.events.append(("start", run.start_step, run.max_train_steps, run.family))

    @hookimpl
    def on_step_end(self, run: Any, step: int, logs: dict[str, float]) -> None:
        self.events.append(("step", step, sorted(logs)))

    @hookimpl
    def on_checkpoint_saved(self, run: Any, step: int, path: Path) -> None:
        self.events.append(("checkpoint", step, (path / "state.json").is_file()))

    @hookimpl
    def on_validation_done(self, run: Any, result: Any) -> None:
        self.events.append(("validation", result.step, all(p.is_file() for p in result.media.values())))

    @hookimpl
    def on_run_end(self, run: Any, outputs: dict[str, Path], error: BaseException | None) -> None:
        self.events.append(("end", sorted(outputs), error))


@pytest.fixture
def recorded(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    recorder = _Recorder()
    host = PluginHost.build([], extra={"toy": ToyFamily(), "rec": recorder})
    cfg = toy_config(tmp_path, max_train_steps=4, checkpoint_step_interval=2)
    cfg["validation"]["validation_step_interval"] = 3
    train(resolve_config(cfg, host), host)
    return recorder.events


def test_hook_on_run_start_comes_first(recorded):
    assert recorded[0] == ("start", 0, 4, "toy")


def test_hook_on_step_end_reports_every_step_with_its_logs(recorded):
    steps = [e for e in recorded if e[0] == "step"]
    assert [e[1] for e in steps] == [1, 2, 3, 4]
    assert {"loss", "lr", "step_time", "grad_norm", "toy"} <= set(steps[0][2])


def test_hook_on_checkpoint_saved_sees_complete_checkpoints(recorded):
    assert [e for e in recorded if e[0] == "checkpoint"] == [("checkpoint", 2, True), ("checkpoint", 4, True)]


def test_hook_on_validation_done_after_its_step_and_at_the_end(recorded):
    assert [e for e in recorded if e[0] == "validation"] == [("validation", 3, True), ("validation", 4, True)]
    order = [(e[0], e[1]) for e in recorded if e[0] in ("step", "validation")]
    assert order.index(("validation", 3)) == order.index(("step", 3)) + 1


def test_hook_on_run_end_last_with_outputs(recorded):
    assert recorded[-1] == ("end", ["adapter", "checkpoint", "validation"], None)


def test_hook_on_run_end_receives_the_error(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)

    class Exploding(ToyFamily):
        @hookimpl
        def compute_loss(self, bundle, batch, generator, config):  # type: ignore[override]
            raise RuntimeError("boom")

    recorder = _Recorder()
    host = PluginHost.build([], extra={"toy": Exploding(), "rec": recorder})
    with pytest.raises(RuntimeError, match="boom"):
        train(resolve_config(toy_config(tmp_path), host), host)
    assert recorder.events[-1][0] == "end" and isinstance(recorder.events[-1][2], RuntimeError)


def test_unknown_key_in_a_plugin_section_suggests_the_right_one():
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    with pytest.raises(ConfigError, match=r"unknown key 'toy.toy_hiden' \(did you mean 'toy_hidden'\?\)"):
        resolve_config({"toy": {"toy_hiden": 3}}, host)


def test_the_plugin_host_checks_a_data_backend_for_every_method_of_the_contract():
    # The host checks by method names (importing the contract would make it import a floor above it), so
    # the names it checks must be the DataBackend ABC's own.
    import inspect

    from tuner.data.storage import DataBackend
    from tuner.plugins import _DATA_BACKEND_METHODS

    contract = {name for name, _ in inspect.getmembers(DataBackend, inspect.isfunction) if not name.startswith("_")}
    assert set(_DATA_BACKEND_METHODS) == contract

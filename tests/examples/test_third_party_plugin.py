"""The example third-party plugin, built and installed as an outside author would.

`examples/tuner-plugin-steplog` is installed for real (pip, its own
pyproject, the ``tuner.plugins`` entry point) into a temporary folder that
only the subprocesses of these tests see, so it never becomes active for
anyone else. Its hooks are also called directly, from its source folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tuner import hookimpl
from tuner.config import resolve_config
from tuner.errors import ConfigError
from tuner.plugin_discovery import DISABLE_AUTOLOAD_ENV
from tuner.plugins import PluginHost
from tuner.types.training import RunInfo

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tuner-plugin-steplog"
VERSION = "0.1.0"


def _run(args: list[str], env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The example installed into its own folder, and an environment that puts it on the path."""
    target = tmp_path_factory.mktemp("site")
    env = {k: v for k, v in os.environ.items() if k != DISABLE_AUTOLOAD_ENV}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # --no-index and --no-deps: nothing is downloaded, and tuner stays the
    # copy already installed; --no-build-isolation uses the installed hatchling.
    _run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "--target", str(target), str(EXAMPLE)],
        env,
        target,
    )
    assert (target / f"tuner_steplog-{VERSION}.dist-info" / "entry_points.txt").is_file()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH", "")) if p)
    return target, env


@pytest.mark.slow
def test_installed_plugin_is_listed_by_tuner_plugins(site: tuple[Path, dict[str, str]], tmp_path: Path):
    _, env = site
    out = _run([sys.executable, "-m", "tuner.cli", "plugins", "--json"], env, tmp_path)
    infos = {p["name"]: p for p in json.loads(out)}
    assert "steplog" in infos, sorted(infos)
    info = infos["steplog"]
    assert info["version"] == VERSION
    assert info["source"] == "tuner_steplog.plugin:plugin"
    assert info["sections"] == ["steplog"]
    assert info["families"] == []
    assert {"on_run_start", "on_step_end", "on_run_end"} <= set(info["hooks"])


_PROBE = """
import json, sys
from tuner.plugins import PluginHost
import tuner_steplog.plugin
light = "torch" not in sys.modules
print(json.dumps({
    "file": tuner_steplog.plugin.__file__,
    "light": light,
    "wan": sorted(PluginHost.build(["wan"]).sections),
    "steplog": sorted(PluginHost.build(["steplog"]).sections),
}))
"""


@pytest.mark.slow
def test_installed_plugin_is_active_only_when_named(site: tuple[Path, dict[str, str]], tmp_path: Path):
    target, env = site
    probe = json.loads(_run([sys.executable, "-c", _PROBE], env, tmp_path))
    assert Path(probe["file"]).is_relative_to(target)  # the installed copy, not the source tree
    assert probe["light"], "importing the entry point must not import torch"
    assert "steplog" not in probe["wan"] and "wan" in probe["wan"]
    assert "steplog" in probe["steplog"]


# -- the hooks, called directly -------------------------------------------


class _StubFamily:
    # resolve_config needs a model family; this one never loads anything.
    @hookimpl
    def register_model_families(self, register: Any) -> None:
        register("stub", "no model: for config tests")


@pytest.fixture
def steplog(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    from tuner_steplog.plugin import StepLog

    return StepLog()


def _start(steplog: Any, raw: dict[str, Any], tmp_path: Path) -> tuple[PluginHost, RunInfo]:
    host = PluginHost.build([], extra={"steplog": steplog, "stub": _StubFamily()})
    config = resolve_config(raw, host, base_dir=tmp_path)
    run = RunInfo(tmp_path / "out", max_train_steps=5, start_step=0, family="stub", config=config)
    host.on_run_start(run)
    return host, run


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_steplog_writes_every_n_steps_and_an_end_line(steplog: Any, tmp_path: Path):
    host, run = _start(steplog, {"steplog": {"steplog_every": 2}}, tmp_path)
    for step in range(1, 6):
        host.on_step_end(run, step, {"loss": 1.0 / step, "lr": 1e-4})
        if step == 2:  # flushed as it goes, not only at the end
            assert _lines(tmp_path / "out" / "steps.jsonl") == [{"step": 2, "loss": 0.5, "lr": 1e-4}]
    host.on_run_end(run, {}, None)
    assert _lines(tmp_path / "out" / "steps.jsonl") == [
        {"step": 2, "loss": 0.5, "lr": 1e-4},
        {"step": 4, "loss": 0.25, "lr": 1e-4},
        {"event": "end", "error": None},
    ]
    assert steplog._logs == {}  # the file is closed


def test_steplog_path_option_truncates_and_records_the_error(steplog: Any, tmp_path: Path):
    # A top-level option works like one in [steplog]; a relative path is read from the config's folder.
    raw = {"steplog_path": "logs/steps.jsonl"}
    target = tmp_path / "logs" / "steps.jsonl"
    host, run = _start(steplog, raw, tmp_path)
    host.on_step_end(run, 1, {"loss": 0.5})
    host.on_run_end(run, {}, None)
    assert len(_lines(target)) == 2

    host, run = _start(steplog, raw, tmp_path)
    host.on_step_end(run, 1, {"loss": 0.25})
    host.on_run_end(run, {}, RuntimeError("out of memory"))
    assert _lines(target) == [{"step": 1, "loss": 0.25}, {"event": "end", "error": "RuntimeError('out of memory')"}]
    assert not (tmp_path / "out" / "steps.jsonl").exists()


def test_steplog_section_rejects_unknown_keys_and_bad_values(steplog: Any, tmp_path: Path):
    host = PluginHost.build([], extra={"steplog": steplog, "stub": _StubFamily()})
    with pytest.raises(ConfigError, match="steplog_evry") as excinfo:
        resolve_config({"steplog": {"steplog_evry": 10}}, host, base_dir=tmp_path)
    assert "steplog_every" in str(excinfo.value)  # the suggestion
    with pytest.raises(ConfigError, match=r"steplog\.steplog_every"):
        resolve_config({"steplog": {"steplog_every": 0}}, host, base_dir=tmp_path)
    fields = host.sections["steplog"].model_fields
    assert all(f.description for f in fields.values())

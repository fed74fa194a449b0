"""Which layout exported adapters get (lora_format, the family's 'auto'), LyCORIS alphas and preset coverage."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from tuner import hookimpl
from tuner.config import resolve_config
from tuner.data.synthetic import write_synthetic_clips
from tuner.errors import PluginError
from tuner.plugins import PluginHost
from tuner.testing.toy import ToyFamily, toy_config
from tuner.testing.toy_model import ToyDenoiser
from tuner.train.adapters import Lycoris
from tuner.train.run import train
from tuner.train.settings import TrainSection


class Exporting(ToyFamily):
    """A toy family that names its 'auto' layout and records the layout each export asks for."""

    def __init__(self, auto: str) -> None:
        super().__init__()
        self.auto = auto
        self.formats: list[str] = []

    @hookimpl
    def load_model(self, config: Any, device: torch.device) -> Any:
        bundle = ToyFamily.load_model(self, config, device)
        bundle.auto_lora_format = self.auto
        return bundle

    @hookimpl
    def export_adapter(self, bundle: Any, weights: Any, path: Any, lora_format: str) -> None:
        self.formats.append(lora_format)
        return None  # the core writes peft's names


def _run(tmp_path, family, **train_options):
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    host = PluginHost.build([], extra={"toy": family})
    cfg = toy_config(tmp_path, max_train_steps=2, checkpoint_step_interval=1, use_ema=True, **train_options)
    cfg["validation"]["validation_prompt"] = None
    return train(resolve_config(cfg, host), host)


def test_auto_is_the_familys_layout_for_every_file_and_an_explicit_layout_wins(tmp_path, capsys):
    family = Exporting("comfyui")
    _run(tmp_path / "auto", family)
    # Two checkpoints and the end, each with the adapter and its EMA.
    assert family.formats == ["comfyui"] * 6
    assert "adapter files: comfyui key layout (lora_format = auto)" in capsys.readouterr().err
    family = Exporting("comfyui")
    _run(tmp_path / "explicit", family, lora_format="diffusers")
    assert set(family.formats) == {"diffusers"}
    assert TrainSection().lora_format == "auto"


def test_a_family_naming_an_unknown_auto_layout_stops_at_start_up(tmp_path):
    family = Exporting("kohya")
    with pytest.raises(PluginError, match="auto_lora_format 'kohya'"):
        _run(tmp_path, family)
    assert family.formats == [] and family.calls.get("compute_loss") is None


def _lycoris(tmp_path, spec: dict[str, Any], targets=("inp", "mid", "out")) -> Lycoris:
    path = tmp_path / "lycoris.json"
    path.write_text(json.dumps(spec))
    return Lycoris(ToyDenoiser(), TrainSection(lora_type="lycoris", lycoris_config=path), list(targets))


@pytest.mark.parametrize(
    "spec, idle",
    [
        ({"algo": "lokr", "linear_dim": 10000, "linear_alpha": 1, "factor": 4}, True),  # both factors full: scale 1
        ({"algo": "lokr", "linear_dim": 2, "linear_alpha": 1, "factor": 4}, False),  # w2 low-rank: alpha / 2
        ({"algo": "locon", "linear_dim": 4, "linear_alpha": 2}, False),
        ({"algo": "loha", "linear_dim": 4, "linear_alpha": 2}, False),
        ({"algo": "full"}, False),  # stores no alpha at all
    ],
)
def test_idle_alphas_are_the_full_factor_lokr_ones_and_modules_are_named_whole(tmp_path, spec, idle):
    adapter = _lycoris(tmp_path, spec)
    weights = adapter.weights()
    assert weights.modules() == ["inp", "mid", "out"]  # LoCon's lora_down.weight names no module of its own
    assert weights.idle_alphas() == ({"inp", "mid", "out"} if idle else set())
    native = weights.native()
    assert {k.split(".")[0] for k in native} == {"lycoris_inp", "lycoris_mid", "lycoris_out"}


def test_lycoris_without_a_preset_adapts_the_targets_and_no_preset_leaks_into_the_next_run(tmp_path):
    first = _lycoris(tmp_path, {"algo": "lokr", "apply_preset": {"target_module": ["ToyDenoiser"], "target_name": ["x"]}})
    assert sorted(first.module_names.values()) == ["inp", "mid", "out"]
    # LyCORIS keeps presets on its class; the next run, without one, adapts exactly its targets.
    second = _lycoris(tmp_path, {"algo": "lokr"}, targets=("mid",))
    assert list(second.module_names.values()) == ["mid"]
    assert second.coverage() is None


def test_preset_coverage_counts_the_linear_layers_and_names_what_matched_nothing(tmp_path):
    few = _lycoris(tmp_path, {"algo": "lokr", "apply_preset": {"target_module": ["Atention"], "target_name": ["inp", "blocks.*"]}})
    message, worth_a_notice = few.coverage()
    assert worth_a_notice
    assert "apply_preset adapts 1 of 3 linear layers" in message
    assert "matched no module: target_module 'Atention', target_name 'blocks.*'" in message
    every = _lycoris(tmp_path, {"algo": "lokr", "apply_preset": {"target_module": ["ToyDenoiser"]}})
    assert every.coverage() == (f"train.lycoris_config {tmp_path / 'lycoris.json'}: apply_preset adapts 3 of 3 linear layers", False)
    with pytest.raises(Exception, match="apply_preset must be an object"):
        _lycoris(tmp_path, {"algo": "lokr", "apply_preset": ["inp"]})


def test_alpha_scalars_keep_their_exact_value_in_a_bf16_file(tmp_path):
    from safetensors.torch import load_file

    spec = tmp_path / "locon.json"
    spec.write_text(json.dumps({"algo": "locon", "linear_dim": 4, "linear_alpha": 0.3}))
    outputs = _run(tmp_path, ToyFamily(), lora_type="lycoris", lycoris_config=str(spec), save_dtype="bf16")
    saved = load_file(outputs["adapter"])
    alphas = {k: v for k, v in saved.items() if k.endswith(".alpha")}
    assert len(alphas) == 3 and all(v.dtype == torch.float32 and v.item() == torch.tensor(0.3).item() for v in alphas.values())
    assert {v.dtype for k, v in saved.items() if k not in alphas} == {torch.bfloat16}

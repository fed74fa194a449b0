"""Every adapter file describes itself, whichever family (or none of its hooks) wrote it: the toy family."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file

from tuner import hookimpl
from tuner.config import resolve_config
from tuner.data.synthetic import write_synthetic_clips
from tuner.plugins import PluginHost
from tuner.testing.toy import ToyFamily, toy_config
from tuner.train.run import train


class OldExporter(ToyFamily):
    """A family whose export_adapter predates the metadata argument: it writes plain tensors."""

    @hookimpl
    def export_adapter(self, bundle: Any, weights: Any, path: Path, lora_format: str) -> Path:
        save_file({k: v.contiguous() for k, v in weights.tensors.items()}, str(path))
        return path


def _metadata(tmp_path: Path, family: ToyFamily) -> dict[str, str]:
    write_synthetic_clips(tmp_path / "clips", count=1, num_frames=3, width=16, height=16)
    raw = toy_config(tmp_path, max_train_steps=1, lora_rank=4, lora_alpha=8.0, checkpoint_step_interval=0)
    raw["validation"]["validation_disable"] = True
    host = PluginHost.build([], extra={"toy": family})
    outputs = train(resolve_config(raw, host, base_dir=tmp_path), host)
    with safe_open(str(outputs["adapter"]), framework="pt") as f:
        return f.metadata()


def test_the_cores_own_layout_carries_the_trained_alpha_for_peft(tmp_path):
    meta = _metadata(tmp_path, ToyFamily())
    assert meta["tuner.layout"] == "peft" and meta["tuner.family"] == "toy" and meta["ss_network_dim"] == "4"
    stored = json.loads(meta["lora_adapter_metadata"])
    assert (stored["transformer.r"], stored["transformer.lora_alpha"]) == (4, 8.0), "nothing folded in this layout"


def test_a_family_exporter_without_the_metadata_argument_still_writes_described_files(tmp_path):
    meta = _metadata(tmp_path, OldExporter())
    assert meta["modelspec.sai_model_spec"] == "1.0.0" and meta["tuner.alpha"] == "8.0" and meta["ss_steps"] == "1"

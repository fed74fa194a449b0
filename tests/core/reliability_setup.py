"""Helpers of the reliability tests (tests/core/test_reliability_*.py): toy runs and the files they leave."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from tuner.config import resolve_config
from tuner.data.synthetic import write_synthetic_clips
from tuner.plugins import PluginHost
from tuner.testing.toy import ToyFamily, toy_config
from tuner.train.run import train

ADAPTERS = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_ema.safetensors")


def toy_runs(tmp_path: Path):
    """``run(name, family=None, validation=False, **train_options)`` trains the toy family into ``tmp_path/name``.

    Two synthetic clips are written into ``tmp_path/clips`` first; ``run.folder`` is ``tmp_path``.
    """
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)

    def run(name="out", family=None, validation=False, **options):
        family = family or ToyFamily()
        host = PluginHost.build([], extra={"toy": family})
        cfg = toy_config(tmp_path, **options)
        cfg["train"]["output_dir"] = str(tmp_path / name)
        if validation:
            cfg["validation"]["validation_step_interval"] = 2
        else:
            cfg["validation"]["validation_prompt"] = None
        return train(resolve_config(cfg, host), host)

    run.folder = tmp_path
    return run


def same_files(a: Path, b: Path, names=ADAPTERS) -> bool:
    for name in names:
        x, y = load_file(a / name), load_file(b / name)
        if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
            return False
    return True


def file_tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

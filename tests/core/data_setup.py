"""Helpers of the data tests (tests/core/test_data_*.py, test_clips.py, test_input_data.py): toy configs and plans."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tuner.config import resolve_config
from tuner.data.buckets import make_buckets, plan_samples
from tuner.data.prepare import prepare_samples, scan_samples
from tuner.plugins import PluginHost
from tuner.testing.toy import ToyFamily, toy_config
from tuner.types.bundle import ModelBundle


def wan_like(temporal: int = 4, multiple: int = 16) -> ModelBundle:
    """What plan_samples reads of a bundle: the strides (Wan's by default) and the cache id."""
    return ModelBundle(
        "wan", torch.nn.Identity(), [], temporal_compression=temporal, spatial_multiple=multiple, cache_id="t"
    )


def toy_bundle() -> ModelBundle:
    return wan_like(1, 1)


def configure(folder: Path, backend: list | None = None, train: dict | None = None, **data):
    """A resolved toy config in ``folder``; ``backend`` is written as the backend file."""
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    raw = toy_config(folder, **(train or {}))
    if backend is not None:
        (folder / "backend.json").write_text(json.dumps(backend))
        raw["data"] = {"data_backend_config": "backend.json", "cache_dir": "cache", "num_frames": 5, "resolution": 16}
    raw["data"].update(data)
    return resolve_config(raw, host, folder)


def plan(config, bundle=None):
    scan = scan_samples(config)
    samples = plan_samples(scan, bundle or toy_bundle(), config)
    return scan, samples, make_buckets(samples, scan)


def video(id_: str, folder: str, **extra) -> dict:
    return {"id": id_, "type": "local", "dataset_type": "video", "instance_data_dir": folder, **extra}


def prepared(config):
    family = ToyFamily()
    host = PluginHost.build([], extra={"toy": family})
    scan = scan_samples(config)
    bundle = host.load_model(config, torch.device("cpu"))
    return prepare_samples(host, bundle, config, scan, torch.device("cpu")), family

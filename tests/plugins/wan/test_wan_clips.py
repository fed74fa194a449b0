"""Wan's frame rate in the contract, `tuner data preview` (no weights loaded) and `tuner cache` (then nothing to encode)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tuner.config import read_config_file
from tuner.data.synthetic import read_clock, write_timed_clip
from tuner.media import read_media
from tuner.plugins import PluginHost


@pytest.mark.parametrize(("variant", "fps"), [(None, 16.0), ("ti2v-5b-2.2", 24.0)])
def test_the_bundle_states_the_rate_the_model_was_trained_at_and_the_profile_agrees(tiny_model_dir, tmp_path, variant, fps):
    from tuner.config import load_run_config
    from tuner.data.preview import data_facts
    from tuner.testing.runs import write_run_folder

    config = write_run_folder(tmp_path, tiny_model_dir("wan", variant), plugin="wan", variant=variant, clips=1)
    host, cfg = load_run_config(config, None, None)
    bundle = host.load_model(cfg, torch.device("cpu"))
    facts = data_facts(PluginHost.build(["wan"]), cfg)  # what the preview plans with, no weights loaded
    assert bundle.frame_rate == facts.frame_rate == fps
    assert (facts.temporal_compression, facts.spatial_multiple) == (bundle.temporal_compression, bundle.spatial_multiple)


def test_data_preview_writes_the_frames_that_will_be_encoded_on_the_models_clock(make_run, cli):
    config = make_run(clips=1)
    folder = config.parent
    times = np.arange(150) / 30  # 5 s at 30 fps
    write_timed_clip(folder / "long" / "long.mp4", times, width=128, height=16, fps=30)
    (folder / "long" / "long.txt").write_text("a clock")
    (folder / "backend.json").write_text(json.dumps([{
        "id": "long", "dataset_type": "video", "instance_data_dir": "long", "resolution": 16, "resolution_type": "pixel",
        "video": {"num_frames": 17, "frame_extraction": "uniform", "frame_sample": 3},
    }]))
    result = cli(["data", "preview", "--config", str(config), "--set", "data.data_backend_config=backend.json",
                  "--set", "data.instance_data_dir="])
    assert result.exit_code == 0, result.stderr
    out = folder / "cache" / "preview" / "long"
    videos = sorted(out.glob("*.mp4"))
    assert len(videos) == 3 and (out / "contact_sheet.png").is_file()
    starts = []
    for video in videos:
        frames = read_media(video)
        assert frames.shape == (17, 16, 128, 3), "the training size and length"
        shown = np.array([read_clock(f) for f in frames])
        assert np.abs(np.diff(shown) - 1 / 16).max() <= 1 / 30 + 1e-3, "evenly timed at 16 fps"
        starts.append(shown[0])
    # 80 frames at 16 fps: windows of 17 start at 0, 32 and 63 (the last ends with the clip), within half a 30 fps frame
    assert starts == pytest.approx([0, 32 / 16, 63 / 16], abs=1 / 60 + 1e-3), "uniform: windows spread over the clip"
    said = result.output + result.stderr
    assert "dataset 'long': 1 clip(s), 3 window(s), 3.2 s of footage covered; frames per bucket: 128x16@17 x3" in said
    assert "1 clip(s) at 30 fps resampled to 16 fps" in said
    assert not list((folder / "cache").rglob("*.safetensors")), "nothing encoded"


def test_cache_builds_everything_so_training_encodes_nothing(make_run, cli):
    config = make_run(clips=2, steps=1)
    result = cli(["cache", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    assert "cached: 2 sample(s) in 1 bucket(s)" in result.output
    entries = sorted(p.name for p in (config.parent / "cache").rglob("*.safetensors"))
    assert entries
    result = cli(["train", "--config", str(config), "--set", "validation.validation_prompt="])
    assert result.exit_code == 0, result.stderr
    assert "encoding clips" not in result.stderr and "encoding captions" not in result.stderr
    assert sorted(p.name for p in (config.parent / "cache").rglob("*.safetensors")) == entries
    assert read_config_file(config)["train"]["max_train_steps"] == 1


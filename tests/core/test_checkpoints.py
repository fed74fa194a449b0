"""Checkpoints are atomic, found by step and rotated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomlkit
import torch

from tuner.config import merge, parse_overrides, read_config_file, resolve_config
from tuner.data.synthetic import write_synthetic_clips
from tuner.errors import CheckpointError, TunerError
from tuner.plugins import PluginHost
from tuner.report.jsonlog import read_log
from tuner.testing.toy import ToyFamily, toy_config
from tuner.train.checkpoints import (
    ADAPTER_FILE,
    clean_partials,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
    rotate_checkpoints,
    write_checkpoint,
)
from tuner.train.run import train


def _write(tmp_path, step, **kwargs):
    return write_checkpoint(tmp_path, step, {"x": torch.tensor([step])}, lambda d: (d / ADAPTER_FILE).write_bytes(b"adapter"), {"seed": 1}, **kwargs)


def test_written_checkpoint_reads_back(tmp_path):
    path = _write(tmp_path, 3)
    state, info = read_checkpoint(path)
    assert path.name == "checkpoint-3" and info == {"step": 3, "seed": 1}
    assert torch.equal(state["x"], torch.tensor([3]))
    assert (path / "pytorch_lora_weights.safetensors").read_bytes() == b"adapter"


def test_a_crash_mid_write_leaves_nothing_that_looks_complete(tmp_path):
    _write(tmp_path, 2)

    def crash(path):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(tmp_path, 4, {}, crash, {})
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"
    assert (tmp_path / ".checkpoint-4.partial").exists()
    clean_partials(tmp_path)
    assert not (tmp_path / ".checkpoint-4.partial").exists()


def test_a_folder_without_a_manifest_is_skipped_by_latest_and_refused_by_name(tmp_path):
    (tmp_path / "checkpoint-9").mkdir()
    _write(tmp_path, 5)
    skipped = []
    assert latest_checkpoint(tmp_path, lambda path, why: skipped.append((path.name, why))).name == "checkpoint-5"
    assert skipped == [("checkpoint-9", "manifest.json is missing (it is written last: the write did not finish or files were removed)")]
    with pytest.raises(CheckpointError, match="checkpoint-9 cannot be used: manifest.json is missing"):
        read_checkpoint(tmp_path / "checkpoint-9")


def test_rewriting_a_step_replaces_it(tmp_path):
    _write(tmp_path, 2)
    write_checkpoint(tmp_path, 2, {"x": torch.tensor([7])}, lambda d: (d / ADAPTER_FILE).write_bytes(b"new"), {})
    state, _ = read_checkpoint(tmp_path / "checkpoint-2")
    assert torch.equal(state["x"], torch.tensor([7]))
    assert not list(tmp_path.glob(".*partial"))


def test_rotation_keeps_exactly_the_newest(tmp_path):
    for step in (10, 2, 30, 4):
        _write(tmp_path, step)
    deleted = rotate_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in deleted) == ["checkpoint-2", "checkpoint-4"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10, 30]
    assert rotate_checkpoints(tmp_path, None) == []


def _toy_run_config(tmp_path: Path, **train_options) -> Path:
    """A toy run's config file (clips beside it, output in ``output/``, no validation); relative paths read from its folder."""
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    cfg = toy_config(tmp_path, **train_options)
    cfg["train"]["output_dir"] = "output"
    del cfg["validation"]["validation_prompt"]
    path = tmp_path / "config.toml"
    path.write_text(tomlkit.dumps(cfg))
    return path


def _train(path: Path, *overrides: str) -> None:
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    raw = merge(read_config_file(path), parse_overrides(list(overrides)))
    train(resolve_config(raw, host, base_dir=path.parent), host)


def test_rotation_during_a_run_keeps_the_limit(tmp_path):
    config = _toy_run_config(tmp_path, max_train_steps=6, checkpoint_step_interval=1, checkpoints_total_limit=2)
    _train(config)
    out = config.parent / "output"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-5", "checkpoint-6"]
    info = json.loads((out / "checkpoint-6" / "state.json").read_text())
    assert info["step"] == 6


def test_resume_from_an_explicit_path_and_a_missing_one(tmp_path):
    config = _toy_run_config(tmp_path, max_train_steps=4, checkpoint_step_interval=2)
    _train(config)
    _train(config, "train.resume_from_checkpoint='output/checkpoint-2'", "train.max_train_steps=5")
    starts = [r["start_step"] for r in read_log(config.parent / "output") if r["event"] == "start"]
    assert starts == [0, 2]
    with pytest.raises(TunerError, match="no checkpoint folder"):  # a user error: the CLI's one line, exit code 2
        _train(config, "train.resume_from_checkpoint='output/checkpoint-99'")


def test_the_done_lines_name_only_this_runs_validation_video(toy_run, cli):
    config = toy_run(steps=2)
    first = cli(["train", "--config", str(config)])
    assert first.exit_code == 0 and "  validation: " in first.output
    again = cli(["train", "--config", str(config), "--set", "validation.validation_disable=true",
                 "--set", "train.overwrite_output_dir=true"])
    assert again.exit_code == 0 and "  validation: " not in again.output, "the first run's video is not this run's"

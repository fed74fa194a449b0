"""Checkpoints are atomic, found by step and rotated."""

from __future__ import annotations

import json

import pytest
import torch

from tuner.errors import CheckpointError
from tuner.train.checkpoints import (
    ADAPTER_FILE,
    clean_partials,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
    rotate_checkpoints,
    write_checkpoint,
)


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


def test_rotation_during_a_run_keeps_the_limit(make_run, cli):
    config = make_run(steps=6, overrides=["train.checkpoint_step_interval=1", "train.checkpoints_total_limit=2", "validation.validation_prompt=''"])
    assert cli(["train", "--config", str(config)]).exit_code == 0
    out = config.parent / "output"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-5", "checkpoint-6"]
    info = json.loads((out / "checkpoint-6" / "state.json").read_text())
    assert info["step"] == 6


def test_resume_from_an_explicit_path_and_a_missing_one(make_run, cli):
    config = make_run(steps=4, overrides=["train.checkpoint_step_interval=2", "validation.validation_prompt=''"])
    assert cli(["train", "--config", str(config)]).exit_code == 0
    again = cli(["train", "--config", str(config), "--set", "train.resume_from_checkpoint='output/checkpoint-2'", "--set", "train.max_train_steps=5"])
    assert again.exit_code == 0
    from tuner.report.jsonlog import read_log

    starts = [r["start_step"] for r in read_log(config.parent / "output") if r["event"] == "start"]
    assert starts == [0, 2]
    missing = cli(["train", "--config", str(config), "--set", "train.resume_from_checkpoint='output/checkpoint-99'"])
    assert missing.exit_code == 2 and "no checkpoint folder" in missing.stderr


def test_the_done_lines_name_only_this_runs_validation_video(make_run, cli):
    config = make_run(steps=2)
    first = cli(["train", "--config", str(config)])
    assert first.exit_code == 0 and "  validation: " in first.output
    again = cli(["train", "--config", str(config), "--set", "validation.validation_disable=true",
                 "--set", "train.overwrite_output_dir=true"])
    assert again.exit_code == 0 and "  validation: " not in again.output, "the first run's video is not this run's"

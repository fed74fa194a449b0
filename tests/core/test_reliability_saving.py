"""Saving: every file flushed before its rename, a re-save never loses the good copy, a full disk ends in one line."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from reliability_setup import file_tree, toy_runs

from tuner.errors import CheckpointError, DataError
from tuner.train.checkpoints import (
    ADAPTER_FILE,
    checkpoint_problem,
    clean_partials,
    latest_checkpoint,
    read_checkpoint,
    write_checkpoint,
)


@pytest.fixture
def toy(tmp_path):
    """``toy(name, family=None, validation=False, **train_options)`` trains the toy family into ``tmp_path/name``."""
    return toy_runs(tmp_path)


# -- writing: flushed before renamed, a re-save never loses the good copy ---------------


def _write(folder: Path, step: int, value: int) -> Path:
    return write_checkpoint(
        folder, step, {"x": torch.tensor([value])}, lambda d: (d / ADAPTER_FILE).write_bytes(b"adapter %d" % value), {}
    )


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads open file names from /proc")
def test_every_file_and_folder_is_flushed_before_the_rename(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b)))
    final = _write(tmp_path, 3, 1)
    partial = str(tmp_path / ".checkpoint-3.partial")
    rename = events.index(("replace", partial))
    flushed = {path for kind, path in events[:rename] if kind == "fsync"}
    assert {str(Path(partial) / p.name) for p in final.iterdir()} | {partial} <= flushed
    assert ("fsync", str(tmp_path)) in events[rename:], "the rename itself is flushed"


def test_a_crash_while_re_saving_a_step_never_loses_the_good_copy(tmp_path, monkeypatch):
    good = _write(tmp_path, 2, 1)
    before = file_tree(good)
    real_replace = os.replace
    calls = []

    def crash_on_second(src, dst):
        calls.append(src)
        if len(calls) == 2:  # the old copy is set aside, the new one not yet in place
            raise SystemExit("killed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second)
    with pytest.raises(SystemExit):
        _write(tmp_path, 2, 7)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not good.exists(), "the crash came inside the window"
    assert latest_checkpoint(tmp_path) is None
    assert clean_partials(tmp_path) == [good], "the next start puts the good copy back"
    assert file_tree(good) == before and latest_checkpoint(tmp_path) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
    assert torch.equal(read_checkpoint(good)[0]["x"], torch.tensor([1]))


def test_a_full_disk_during_a_checkpoint_stops_in_one_line_and_keeps_the_last_one(toy, monkeypatch):
    import safetensors.torch

    real = safetensors.torch.save_file

    def full_at_step_4(tensors, filename, *args, **kwargs):
        if "checkpoint-4" in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", full_at_step_4)
    with pytest.raises(CheckpointError) as err:
        toy(max_train_steps=6, checkpoint_step_interval=2)
    out = toy.folder / "out"
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"disk full: writing checkpoint-4 into {out} needs about")
    assert "is free; free some space there or point output_dir at another disk" in message
    assert message.endswith("the last checkpoint is intact")
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-2"], "nothing half-written"
    assert latest_checkpoint(out) == out / "checkpoint-2"


def test_a_full_disk_while_exporting_the_adapter_stops_in_one_line(toy, monkeypatch):
    import safetensors.torch

    real = safetensors.torch.save_file

    def full_outside_checkpoints(tensors, filename, *args, **kwargs):
        if "checkpoint-" not in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", full_outside_checkpoints)
    with pytest.raises(CheckpointError) as err:
        toy(max_train_steps=2)
    out = toy.folder / "out"
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"disk full: writing pytorch_lora_weights.safetensors into {out} needs about")
    assert not list(out.glob(".*partial*")) and checkpoint_problem(out / "checkpoint-2") is None


def test_a_state_that_parses_but_does_not_fit_stops_in_one_line(toy):
    toy(max_train_steps=2)
    ckpt = toy.folder / "out" / "checkpoint-2"
    data = json.loads((ckpt / "training_state.json").read_text())
    del data["state"]["schedule"]  # hand-edited, and the manifest brought up to date
    (ckpt / "training_state.json").write_text(json.dumps(data))
    manifest = json.loads((ckpt / "manifest.json").read_text())
    raw = (ckpt / "training_state.json").read_bytes()
    manifest["files"]["training_state.json"] = {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="checkpoint-2 does not fit this run \\(KeyError: 'schedule'\\)") as err:
        toy(max_train_steps=4, resume_from_checkpoint="latest")
    assert "\n" not in str(err.value)


def test_a_full_disk_while_caching_stops_in_one_line_naming_the_folder(toy, monkeypatch):
    import tuner.cache.store as store

    def full(path, blob):
        path.write_bytes(blob[:10])  # a real full disk leaves the start of the file behind
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_store_bytes", full)
    with pytest.raises(DataError) as err:
        toy(max_train_steps=1)
    message = str(err.value)
    assert "\n" not in message and "disk full: writing the cache entry" in message
    assert f"into {toy.folder / 'cache'}" in message and "needs about" in message and "point cache_dir" in message
    assert not [p for p in (toy.folder / "cache").rglob("*") if p.is_file() and "safetensors" in p.name]


def _full_disk(path: Path) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(path))


@pytest.mark.parametrize("victim", ["data report", "validation video"])
def test_a_full_disk_met_by_any_other_write_ends_in_one_line_naming_the_file(request, cli, monkeypatch, victim):
    """Writes without an option of their own (data report, media, cards) end in one line, not a traceback."""
    import tuner.media as media

    # The toy family validates to a still: a validation video needs the tiny Wan.
    make = request.getfixturevalue("make_run" if victim == "validation video" else "toy_run")
    config = make(steps=1)  # its clips are written before the disk fills
    if victim == "data report":
        real = Path.write_text

        def write_text(self, *args, **kwargs):
            if self.name.startswith(".data_report.json"):
                raise _full_disk(self)
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)
        name = ".data_report.json"
    else:

        def encode(frames, path, fps):
            raise _full_disk(path)

        monkeypatch.setattr(media, "_encode_h264", encode)
        name = ".main.mp4.partial"
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: disk full: writing {name}") and "is free; free some space there" in last
    assert "Traceback" not in result.stderr

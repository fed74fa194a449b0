"""Checkpoints say what they were written for, and only what tuner wrote is read from them.

A resume into another model, adapter or optimizer is one line; ``latest`` goes by the step recorded
inside; a crafted checkpoint (with a manifest regenerated to match) is one line, never a traceback or
a hang, and nothing outside its folder is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tuner.config import resolve_config
from tuner.data.synthetic import write_synthetic_clips
from tuner.errors import CheckpointError
from tuner.plugins import PluginHost
from tuner.report.jsonlog import read_log
from tuner.testing.toy import ToyFamily, toy_config
from tuner.train.checkpoints import ADAPTER_FILE, latest_checkpoint, list_checkpoints, read_checkpoint, write_checkpoint
from tuner.train.run import train


@pytest.fixture
def toy(tmp_path):
    """``toy(name="out", toy={...}, **train_options)`` trains the toy family into ``tmp_path/name``."""
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)

    def run(name="out", toy=None, **options):
        host = PluginHost.build([], extra={"toy": ToyFamily()})
        cfg = toy_config(tmp_path, **{"max_train_steps": 2, "checkpoint_step_interval": 2, **options})
        cfg["train"]["output_dir"] = str(tmp_path / name)
        cfg["validation"]["validation_prompt"] = None
        cfg["toy"] = toy or {}
        return train(resolve_config(cfg, host), host)

    run.folder = tmp_path
    return run


@pytest.mark.parametrize(
    "change, fact",
    [
        ({"toy": {"toy_flavour": "other"}}, "model.flavour: 'plain' there, 'other' here"),
        ({"toy": {"toy_experts": 2}}, "model.experts"),
        ({"toy": {"toy_hidden": 48}}, "model.architecture"),
    ],
    ids=["flavour", "experts", "architecture"],
)
def test_a_checkpoint_of_another_model_is_refused_in_one_line(toy, change, fact):
    toy()
    checkpoint = str(toy.folder / "out" / "checkpoint-2")
    for options in ({}, {"resume_weights_only": True}):  # not even its weights: they belong to another model
        with pytest.raises(CheckpointError) as err:
            toy(name="next", max_train_steps=4, resume_from_checkpoint=checkpoint, **options, **change)
        message = str(err.value)
        assert "\n" not in message and fact in message and "belong to another model" in message
        assert "resume_weights_only" not in message


@pytest.mark.parametrize(
    "change, fact",
    [({"lora_alpha": 2.0}, "adapter.alpha: 8.0 there, 2.0 here"), ({"optimizer": "optimi-lion"}, "optimizer.name: 'adamw' there")],
    ids=["alpha", "optimizer"],
)
def test_a_changed_alpha_or_optimizer_is_refused_with_a_way_to_start_from_the_weights(toy, change, fact):
    toy()
    checkpoint = toy.folder / "out" / "checkpoint-2"
    with pytest.raises(CheckpointError) as err:
        toy(max_train_steps=4, resume_from_checkpoint=str(checkpoint), **change)
    assert "\n" not in str(err.value) and fact in str(err.value) and "resume_weights_only = true" in str(err.value)

    # The way out it names: a new run (step 0, its own optimizer) starting from the checkpoint's weights.
    toy(name="again", max_train_steps=1, learning_rate=1e-12, resume_from_checkpoint=str(checkpoint), resume_weights_only=True, **change)
    assert [r["start_step"] for r in read_log(toy.folder / "again") if r["event"] == "start"] == [0]
    taken, saved = load_file(toy.folder / "again" / ADAPTER_FILE), load_file(checkpoint / ADAPTER_FILE)
    assert all(torch.allclose(taken[k], saved[k], atol=1e-6) for k in saved) and any(saved[k].abs().sum() > 0 for k in saved)


def _write(folder: Path, step: int) -> Path:
    return write_checkpoint(folder, step, {"x": torch.tensor([step])}, lambda d: (d / ADAPTER_FILE).write_bytes(b"a"), {"seed": 1})


def _manifest(folder: Path) -> None:
    """What an attacker does after editing: a manifest matching every entry (FIFOs and links included, unread)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.name == "manifest.json" or path.is_dir() and not path.is_symlink():
            continue
        data = path.read_bytes() if path.is_file() else b""  # a link: what it points at
        files[path.relative_to(folder).as_posix()] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps({"files": files}))


def test_latest_goes_by_the_step_recorded_inside_and_only_by_names_tuner_writes(tmp_path):
    _write(tmp_path, 2)
    _write(tmp_path, 4)
    for name in ("checkpoint-1000", "checkpoint-\u0661\u0660\u0660\u0660", "checkpoint-0099", "checkpoint--5", "checkpoint-+7"):
        os.rename(tmp_path / "checkpoint-2", tmp_path / name)
        _write(tmp_path, 2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 4, 1000]  # the odd digits are no checkpoint
    skipped = []
    assert latest_checkpoint(tmp_path, lambda p, why: skipped.append((p.name, why))) == tmp_path / "checkpoint-4"
    assert skipped == [("checkpoint-1000", "state.json records step 2, not 1000 (a renamed or copied folder)")]

    # A negative step written inside a folder with a proper name, the manifest regenerated: refused.
    (tmp_path / "checkpoint-4" / "state.json").write_text('{"step": -5, "seed": 1}')
    _manifest(tmp_path / "checkpoint-4")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"


_CRAFTED = {
    "an infinite step": lambda f: (f / "state.json").write_text('{"step": Infinity}'),
    "a huge step": lambda f: (f / "state.json").write_text('{"step": 1e400}'),
    "a step of true": lambda f: (f / "state.json").write_text('{"step": true}'),
    "a list as state": lambda f: (f / "state.json").write_text("[4]"),
    "deeply nested state": lambda f: (f / "state.json").write_text("[" * 100_000 + "]" * 100_000),
    "a key twice": lambda f: (f / "state.json").write_text('{"step": 4, "step": 400}'),
    "odd processes": lambda f: (f / "state.json").write_text('{"step": 4, "num_processes": "two"}'),
    "deeply nested training state": lambda f: (f / "training_state.json").write_text('{"format": 1, "state": ' + "[" * 50_000 + "]" * 50_000 + "}"),
    "odd $items": lambda f: (f / "training_state.json").write_text('{"format": 1, "state": {"$items": [[[1], 2]]}}'),
    "a FIFO as the state": lambda f: ((f / "training_state.json").unlink(), os.mkfifo(f / "training_state.json")),
    "a FIFO listed beside": lambda f: os.mkfifo(f / "extra"),
    "a link out of the folder": lambda f: ((f / "state.json").unlink(), (f / "state.json").symlink_to(f.parent.parent / "outside.json")),
    "a name leading out": lambda f: None,
    "a manifest nested deeply": lambda f: None,
    "a manifest listing a list": lambda f: None,
}


@pytest.mark.parametrize("craft", list(_CRAFTED))
def test_a_crafted_checkpoint_with_a_regenerated_manifest_is_one_line_and_never_hangs(tmp_path, craft):
    (tmp_path / "outside.json").write_text('{"step": 4, "seed": 1}')
    folder = _write(tmp_path / "out", 4)
    _CRAFTED[craft](folder)
    _manifest(folder)
    manifest = folder / "manifest.json"
    if craft == "a name leading out":
        files = json.loads(manifest.read_text())["files"]
        data = (tmp_path / "outside.json").read_bytes()
        files["../../outside.json"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest.write_text(json.dumps({"files": files}))
    elif craft == "a manifest nested deeply":
        manifest.write_text('{"files": ' + "[" * 100_000 + "]" * 100_000 + "}")
    elif craft == "a manifest listing a list":
        manifest.write_text('{"files": {"state.json": [1, 2]}}')

    result: list = []
    reader = threading.Thread(target=lambda: result.append(_outcome(folder)), daemon=True)
    reader.start()
    reader.join(30)
    if reader.is_alive():  # release a reader blocked on a FIFO (today's code), then fail
        for fifo in (folder / "training_state.json", folder / "extra"):
            if fifo.exists() and not fifo.is_file():
                os.close(os.open(fifo, os.O_RDWR))
        pytest.fail("reading the checkpoint hangs")
    kind, message = result[0]
    assert kind == "refused" and "\n" not in message, f"{kind}: {message}"
    if craft not in ("deeply nested training state", "odd $items"):  # 'latest' checks the files, not the state inside
        assert latest_checkpoint(tmp_path / "out") is None


def _outcome(folder: Path) -> tuple[str, str]:
    try:
        read_checkpoint(folder)
    except CheckpointError as exc:
        return "refused", str(exc)
    except BaseException as exc:  # a traceback for the user
        return "crashed", f"{type(exc).__name__}: {exc}"[:300]
    return "accepted", ""


def test_overwrite_output_dir_removes_a_linked_checkpoint_not_what_it_points_at(toy):
    toy()
    kept = toy.folder / "out" / "checkpoint-2"
    before = {p.name: p.read_bytes() for p in kept.iterdir()}
    (toy.folder / "other").mkdir()
    (toy.folder / "other" / "checkpoint-2").symlink_to(kept, target_is_directory=True)
    with pytest.raises(Exception, match="holds another run's checkpoints"):
        toy(name="other")
    toy(name="other", overwrite_output_dir=True)
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == before  # the target is whole
    assert not (toy.folder / "other" / "checkpoint-2").is_symlink()

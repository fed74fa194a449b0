"""Every write meets the real failure: a file-size limit (the kernel's own EFBIG), links planted in a dataset.

The disk-full cases run in child processes with ``RLIMIT_FSIZE`` set: CPython ignores SIGXFSZ, so a
write past the limit fails with EFBIG exactly where a full disk fails with ENOSPC, and safetensors
reports it with its own ``SafetensorError``. No errno is patched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tuner.config import resolve_config
from tuner.data.prepare import scan_samples
from tuner.data.synthetic import write_broken_files, write_synthetic_clips
from tuner.errors import DataError
from tuner.plugins import PluginHost
from tuner.testing.toy import ToyFamily, toy_config
from tuner.train.run import train

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE and O_NOFOLLOW")

HERE = Path(__file__).parent
LIMIT = 64 * 1024  # bytes: the file-size limit of the child processes

# Each writer is handed more than LIMIT bytes, in a child whose file-size limit is LIMIT. The child runs
# each through the CLI's error wrapper and prints what the user would see and which files remain.
_WRITERS = """
import io, json, os, resource, sys, contextlib
from pathlib import Path
import numpy as np
import torch
import typer
from tuner.commands.errors import friendly_errors

folder = Path(sys.argv[1])
limit = int(sys.argv[2])
big = torch.rand(limit // 2)  # float32: twice the limit

def checkpoint():
    from tuner.train.checkpoints import write_checkpoint
    write_checkpoint(folder / "out", 2, {"x": big}, lambda d: None, {"seed": 1})

def checkpoint_adapter():
    from safetensors.torch import save_file
    from tuner.train.checkpoints import write_checkpoint
    write_checkpoint(folder / "out", 4, {"x": torch.zeros(4)}, lambda d: save_file({"w": big}, str(d / "a.safetensors")), {})

def cache_entry():
    from tuner.cache.store import write_entry
    write_entry(folder / "cache" / "vae" / "clip.safetensors", {"latents": big})

def log():
    from tuner.report.jsonlog import JsonLog
    from types import SimpleNamespace
    run = SimpleNamespace(output_dir=folder / "out", start_step=0, max_train_steps=1, config=None)
    events = JsonLog()
    events._file = events._open(run)
    events._write({"event": "step", "step": 1})
    events._write({"event": "step", "step": 2, "huge": "x" * limit})

def video():
    from tuner.media import write_video
    write_video(np.random.default_rng(0).random((9, 256, 256, 3)), folder / "out" / "validation" / "main.mp4")

def image():
    from tuner.media import write_image
    write_image(np.random.default_rng(0).random((512, 512, 3)), folder / "out" / "validation" / "main.png")

def data_report():
    from tuner.data.report import DataReport
    report = DataReport()
    report.buckets = ["x" * 1000] * (limit // 500)
    report.write(folder / "cache" / "data_report.json")

def model_card():
    from types import SimpleNamespace
    import tuner.report.modelcard as card
    card.model_card = lambda *a: "x" * (2 * limit)
    card.run_scrubber = None
    import tuner.report.secrets as secrets
    secrets.run_scrubber = lambda config: (lambda text: text)
    card.write_model_card(SimpleNamespace(output_dir=folder / "out", config=None), {}, None)

def quarantine():
    from tuner.data.quarantine import quarantine_file
    root = folder / "clips"
    root.mkdir(exist_ok=True)
    (root / "broken.mp4").write_bytes(b"")
    quarantine_file(root, root / "broken.mp4", "x" * (2 * limit))

def probe_index():
    from tuner.data.probe import FileIndex
    index = FileIndex(folder / "cache" / "index.json")
    index.records = {str(n): {"pad": "x" * 100} for n in range(limit // 50)}
    index.dirty = True
    index.save()

resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
results = {}
for writer in [checkpoint, checkpoint_adapter, cache_entry, log, video, image, data_report, model_card, quarantine, probe_index]:
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err):
        try:
            friendly_errors(writer)()
        except typer.Exit as exc:
            code = exc.exit_code
        except Exception as exc:  # what the CLI would end in: a traceback
            code, err = f"traceback: {type(exc).__name__}", io.StringIO(str(exc))
    results[writer.__name__] = {"code": code, "stderr": err.getvalue()}
left = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if "partial" in p.name)
print(json.dumps({"results": results, "partial": left}))
"""


@pytest.fixture(scope="module")
def limited_writes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("limited")
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_WRITERS), str(folder), str(LIMIT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, json.loads(done.stdout.strip().splitlines()[-1])


WRITERS = ["checkpoint", "checkpoint_adapter", "cache_entry", "log", "video", "image", "data_report", "model_card",
           "quarantine", "probe_index"]  # fmt: skip


@pytest.mark.parametrize("writer", WRITERS)
def test_every_write_over_a_real_file_size_limit_ends_in_one_line(limited_writes, writer):
    _, found = limited_writes
    result = found["results"][writer]
    assert result["code"] == 2, result
    lines = result["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: disk full: writing"), result["stderr"]
    assert "ulimit -f" in lines[0], "a file-size limit is named as such: free space would not help"


def test_a_write_over_the_limit_leaves_no_partial_file(limited_writes):
    folder, found = limited_writes
    assert found["partial"] == []
    out = folder / "out"
    assert not [p for p in out.iterdir() if p.name.startswith(".checkpoint-")], "no .partial checkpoint folder"
    assert not (out / "checkpoint-2").exists() and not (out / "checkpoint-4").exists()
    assert not list((folder / "cache").rglob("*.safetensors")), "no cut-short cache entry"
    assert not (out / "README.md").exists() and not (folder / "cache" / "data_report.json").exists()
    log = (out / "train_log.jsonl").read_bytes()
    assert log.endswith(b"\n") and [json.loads(line)["step"] for line in log.splitlines()] == [1], "whole lines only"
    quarantine_log = folder / "clips" / ".tuner-quarantine" / "quarantine.jsonl"
    assert not quarantine_log.exists() or quarantine_log.read_bytes() == b""


def test_a_training_run_over_a_real_file_size_limit_stops_in_one_line_and_resumes(tmp_path):
    """The issue's case: safetensors' own error while writing a checkpoint, then the run goes on once there is room."""
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)

    # toy_hidden 256: a training state of ~100 kB, over the limit, unlike every other file of the run
    options = dict(max_train_steps=2, checkpoint_step_interval=2, toy={"toy_hidden": 256}, file_size_limit=LIMIT)
    full = subprocess.run(
        [sys.executable, str(HERE / "toy_cli.py"), str(tmp_path), json.dumps(options)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert full.returncode == 2, full.stderr[-3000:]
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: disk full: writing checkpoint-2 into {tmp_path / 'out'} needs about"), last
    assert "ulimit -f" in last and last.endswith("the last checkpoint is intact")
    assert "Traceback" not in full.stderr and "SafetensorError" not in full.stderr
    out = tmp_path / "out"
    left = [p.name for p in out.iterdir() if "checkpoint" in p.name or "partial" in p.name or p.suffix == ".safetensors"]
    assert left == [], "no .partial folder, no half adapter"
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    cfg = toy_config(tmp_path, max_train_steps=2, checkpoint_step_interval=2, resume_from_checkpoint="latest")
    cfg["toy"], cfg["validation"]["validation_prompt"] = {"toy_hidden": 256}, None
    train(resolve_config(cfg, host), host)  # with room again, the run goes on
    assert (out / "checkpoint-2").is_dir() and (out / "pytorch_lora_weights.safetensors").is_file()


# -- links planted in a dataset ---------------------------------------------------------------


def _dataset_with_a_broken_file(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "clips"
    write_synthetic_clips(root, count=2, num_frames=3, width=16, height=16)
    broken = write_broken_files(tmp_path / "broken", num_frames=3, width=16, height=16)["empty.mp4"]
    os.replace(broken, root / "empty.mp4")
    (root / "empty.txt").write_text("a broken file\n")
    return root, root / "empty.mp4"


def _scan(tmp_path: Path) -> None:
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    cfg = toy_config(tmp_path)
    cfg["data"]["delete_problematic_images"] = True
    scan_samples(resolve_config(cfg, host))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("planted", ["quarantine folder", "quarantine log", "sub-folder of the quarantine"])
def test_the_quarantine_follows_no_link_planted_in_the_dataset(tmp_path, planted):
    root, broken = _dataset_with_a_broken_file(tmp_path)
    outside = tmp_path / "home"
    outside.mkdir()
    (outside / ".bashrc").write_text("echo hello\n")
    before = _snapshot(outside)
    if planted == "quarantine folder":
        link = root / ".tuner-quarantine"
        link.symlink_to(outside, target_is_directory=True)
    elif planted == "quarantine log":
        (root / ".tuner-quarantine").mkdir()
        link = root / ".tuner-quarantine" / "quarantine.jsonl"
        link.symlink_to(outside / ".bashrc")
    else:
        (root / "sub").mkdir()
        os.replace(broken, root / "sub" / "empty.mp4")
        broken = root / "sub" / "empty.mp4"
        (root / ".tuner-quarantine").mkdir()
        link = root / ".tuner-quarantine" / "sub"
        link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError) as err:
        _scan(tmp_path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{link} is a symbolic link (to {outside}")
    assert "never writes through a link found in a dataset" in message
    assert _snapshot(outside) == before, "nothing moved into or appended to what the link points at"
    if planted != "quarantine log":
        assert broken.exists(), "the file stays where it was"


def test_a_crafted_file_name_is_escaped_in_every_log(tmp_path, capsys):
    root, broken = _dataset_with_a_broken_file(tmp_path)
    crafted = root / "evil\n$(touch pwned)\x1b[2J[bold].mp4"
    os.replace(broken, crafted)
    _scan(tmp_path)
    err = capsys.readouterr().err
    assert "\x1b" not in err and "evil\\n$(touch pwned)\\x1b[2J[bold].mp4" in err, "escaped, on one line"
    records = (root / ".tuner-quarantine" / "quarantine.jsonl").read_text().splitlines()
    assert len(records) == 1 and json.loads(records[0])["file"] == crafted.name
    assert (root / ".tuner-quarantine" / crafted.name).exists()


def test_quarantine_never_moves_files_reached_through_a_symlink_outside_the_dataset(tmp_path, capsys):
    root = tmp_path / "clips"
    write_synthetic_clips(root, count=2, num_frames=3, width=16, height=16)
    outside = write_broken_files(tmp_path / "elsewhere", num_frames=3, width=16, height=16)
    inside = write_broken_files(root / "own", num_frames=3, width=16, height=16)
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    cfg = toy_config(tmp_path)
    cfg["data"]["delete_problematic_images"] = True
    scan_samples(resolve_config(cfg, host))
    assert all(p.exists() and p.with_suffix(".txt").exists() for p in outside.values()), "nothing outside moved"
    assert not (tmp_path / "elsewhere" / ".tuner-quarantine").exists()
    assert not inside["empty.mp4"].exists(), "files inside the dataset are quarantined as before"
    assert (root / ".tuner-quarantine" / "own" / "empty.mp4").is_file()
    assert f"{root / 'linked' / 'empty.mp4'} is not quarantined: its folder lies outside" in capsys.readouterr().err

"""Reliability of what a run writes: no code from checkpoints, nothing lost on a crash, no secret printed.

The toy family keeps these fast; the crash-injection test kills real processes with SIGKILL.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tuner import hookimpl
from tuner.cache.store import clean_partials as clean_cache_partials
from tuner.config import resolve_config
from tuner.data.prepare import scan_samples
from tuner.data.synthetic import write_broken_files, write_synthetic_clips
from tuner.errors import CheckpointError, ConfigError, DataError
from tuner.plugins import PluginHost
from tuner.report.delivery import Delivery, Post
from tuner.report.jsonlog import read_log
from tuner.report.secrets import Scrubber
from tuner.testing.toy import ToyFamily, toy_config
from tuner.train.checkpoints import (
    ADAPTER_FILE,
    checkpoint_problem,
    clean_partials,
    latest_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from tuner.train.run import train

ADAPTERS = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_ema.safetensors")
# Four steps, a checkpoint every two, only one kept, EMA on: every rename a checkpoint write has.
CRASH_RUN = dict(max_train_steps=4, checkpoint_step_interval=2, checkpoints_total_limit=1, use_ema=True, ema_decay=0.5)


@pytest.fixture
def toy(tmp_path):
    """``toy(name, family=None, validation=False, **train_options)`` trains the toy family into ``tmp_path/name``."""
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


def _same_files(a: Path, b: Path, names=ADAPTERS) -> bool:
    for name in names:
        x, y = load_file(a / name), load_file(b / name)
        if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
            return False
    return True


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- no code from a checkpoint ------------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker``: what a crafted training_state.pt could do with a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_crafted_pickle_is_refused_in_one_line_and_runs_nothing(toy, capsys):
    toy(max_train_steps=2, checkpoint_step_interval=2)
    out = toy.folder / "out"
    # Control: this payload does run code when unpickled.
    probe = toy.folder / "probe"
    pickle.loads(pickle.dumps({"params": _Payload(probe)}))
    assert probe.exists()

    marker = toy.folder / "pwned"
    evil = out / "checkpoint-9"
    shutil.copytree(out / "checkpoint-2", evil)
    (evil / "state.json").write_text(json.dumps({"step": 9, "seed": 42}))
    for name in ("training_state.safetensors", "training_state.json", "manifest.json"):
        (evil / name).unlink()
    torch.save({"params": _Payload(marker)}, evil / "training_state.pt")

    with pytest.raises(CheckpointError) as err:
        toy(max_train_steps=12, resume_from_checkpoint=str(evil))
    assert "\n" not in str(err.value) and "training_state.pt" in str(err.value) and "never loaded" in str(err.value)
    # 'latest' passes it by, naming it, and resumes from the real checkpoint.
    toy(max_train_steps=3, resume_from_checkpoint="latest")
    assert f"skipping damaged checkpoint {evil}" in capsys.readouterr().err
    assert [r["start_step"] for r in read_log(out) if r["event"] == "start"][-1] == 2

    # An attacker who also writes a matching manifest gets no further: the state is only ever JSON + safetensors.
    files = {p.name: {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in evil.iterdir()}
    (evil / "manifest.json").write_text(json.dumps({"files": files}))
    with pytest.raises(CheckpointError, match="does not list training_state.safetensors, training_state.json") as err:
        toy(max_train_steps=12, resume_from_checkpoint=str(evil))
    assert "\n" not in str(err.value)
    assert not marker.exists(), "nothing in the checkpoint ran"


class _CtrlCAt:
    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def on_step_end(self, run, step, logs):
        if step == self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("optimizer", ["adamw", "adamw_bf16", "optimi-lion", "prodigy"])
def test_resume_from_the_safetensors_state_is_exact_for_each_kind_of_optimizer(tmp_path, optimizer):
    """torch, optimi (bf16 Kahan buffers, int32 step counters) and Prodigy (inf in its groups) state all round-trip."""
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    options = dict(optimizer=optimizer, learning_rate=1.0 if optimizer == "prodigy" else 1e-2, max_train_steps=4,
                   lr_scheduler="cosine", use_ema=True, ema_decay=0.5)

    def run(name, *extra, **more):
        host = PluginHost.build([], extra={"toy": ToyFamily(), **{f"x{i}": e for i, e in enumerate(extra)}})
        cfg = toy_config(tmp_path, **options, **more)
        cfg["train"]["output_dir"] = str(tmp_path / name)
        cfg["validation"]["validation_prompt"] = None
        return train(resolve_config(cfg, host), host)

    run("straight")
    with pytest.raises(KeyboardInterrupt):
        run("resumed", _CtrlCAt(2))
    run("resumed", resume_from_checkpoint="latest")
    assert _same_files(tmp_path / "resumed", tmp_path / "straight")
    a = read_checkpoint(tmp_path / "resumed" / "checkpoint-4")[0]["optimizer"]
    b = read_checkpoint(tmp_path / "straight" / "checkpoint-4")[0]["optimizer"]
    assert a["param_groups"] == b["param_groups"]
    for key, value in a["state"][0].items():
        other = b["state"][0][key]
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, key


# -- damaged checkpoints ---------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "truncated state": lambda c: _truncate(c / "training_state.safetensors"),
    "empty state.json": lambda c: (c / "state.json").write_text(""),
    "truncated adapter": lambda c: _truncate(c / ADAPTER_FILE),
    "no manifest": lambda c: (c / "manifest.json").unlink(),
    "flipped byte": lambda c: (c / ADAPTER_FILE).write_bytes(
        (b := (c / ADAPTER_FILE).read_bytes())[:-1] + bytes([b[-1] ^ 1])
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_latest_skips_a_damaged_newest_checkpoint_and_still_ends_exactly(toy, capsys, damage):
    options = dict(max_train_steps=4, checkpoint_step_interval=2, use_ema=True, ema_decay=0.5)
    toy(name="straight", **options)
    toy(name="out", **options)
    out = toy.folder / "out"
    DAMAGE[damage](out / "checkpoint-4")
    assert checkpoint_problem(out / "checkpoint-4") is not None
    capsys.readouterr()

    toy(name="out", resume_from_checkpoint="latest", **options)
    assert f"skipping damaged checkpoint {out / 'checkpoint-4'}" in capsys.readouterr().err
    assert [r["start_step"] for r in read_log(out) if r["event"] == "start"] == [0, 2]
    assert checkpoint_problem(out / "checkpoint-4") is None, "the damaged one was written again"
    assert _same_files(out, toy.folder / "straight")


def test_a_damaged_checkpoint_named_explicitly_stops_before_the_model_loads(toy):
    toy(max_train_steps=2, checkpoint_step_interval=2)
    DAMAGE["truncated adapter"](toy.folder / "out" / "checkpoint-2")
    family = ToyFamily()
    with pytest.raises(CheckpointError) as err:
        toy(family=family, max_train_steps=4, resume_from_checkpoint=str(toy.folder / "out" / "checkpoint-2"))
    message = str(err.value)
    assert "\n" not in message and "checkpoint-2 cannot be used: pytorch_lora_weights.safetensors is" in message
    assert "load_model" not in family.calls


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
    before = _tree(good)
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
    assert _tree(good) == before and latest_checkpoint(tmp_path) == good
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


# -- a fresh run never replaces another run's checkpoints -------------------------------


def test_a_fresh_run_into_another_runs_checkpoints_stops_unless_told_to_overwrite(toy):
    toy(max_train_steps=4, checkpoint_step_interval=2)
    out = toy.folder / "out"
    before = _tree(out)
    family = ToyFamily()
    with pytest.raises(ConfigError) as err:
        toy(family=family, max_train_steps=2)
    message = str(err.value)
    assert "\n" not in message and f"train.output_dir {out} holds another run's checkpoints" in message
    assert "resume_from_checkpoint = 'latest'" in message and "overwrite_output_dir = true" in message
    assert _tree(out) == before and "load_model" not in family.calls, "refused before any work, nothing touched"

    toy(max_train_steps=2, overwrite_output_dir=True)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"], "the earlier run's are gone"
    assert [r["step"] for r in read_log(out) if r["event"] == "step"] == [1, 2], "the log tells this run only"
    with pytest.raises(ConfigError, match="overwrite_output_dir deletes the checkpoints resume_from_checkpoint"):
        toy(max_train_steps=2, overwrite_output_dir=True, resume_from_checkpoint="latest")


@pytest.mark.slow
def test_the_demo_runs_twice_into_the_same_folder(tmp_path, cli):
    args = ["demo", "--plugin", "wan", "--dir", str(tmp_path / "demo"), "--steps", "2"]
    assert cli(args).exit_code == 0
    again = cli(args)
    assert again.exit_code == 0, again.stderr
    assert "overwrite_output_dir: deleting" in again.stderr


# -- validation rounds and cache temporaries across a crash ------------------------------


class _CrashInValidation(ToyFamily):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.crash_at, self.steps = step, []

    @hookimpl
    def validate(self, bundle, request):  # type: ignore[override]
        self.steps.append(request.step)
        if request.step == self.crash_at:
            raise RuntimeError("power cut")
        return super().validate(bundle, request)


def test_a_validation_round_cut_short_by_a_crash_is_rendered_on_resume(toy):
    options = dict(max_train_steps=4, checkpoint_step_interval=2, validation=True)
    with pytest.raises(RuntimeError, match="power cut"):
        toy(family=_CrashInValidation(2), **options)
    out = toy.folder / "out"
    assert (out / "checkpoint-2").is_dir() and not (out / "validation" / ".step-2.json").exists()

    resumed = _CrashInValidation(-1)
    toy(family=resumed, resume_from_checkpoint="latest", **options)
    assert resumed.steps == [2, 4], "the cut round first, then the run's own"
    assert (out / "validation" / "step-2" / "contact-sheet.png").is_file()
    assert (out / "validation" / ".step-2.json").is_file()

    again = _CrashInValidation(-1)
    toy(family=again, resume_from_checkpoint=str(out / "checkpoint-2"), **options)
    assert again.steps == [4], "a finished round is not rendered again"


def test_temporary_cache_files_of_a_dead_process_are_removed_at_the_next_start(toy):
    toy(max_train_steps=1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cache = toy.folder / "cache"
    entry = next(cache.rglob("*.safetensors"))
    orphans = [entry.with_name(f".{entry.name}.{dead.pid}.partial")]
    text = next(p for p in (cache / "text").rglob("*.safetensors"))
    orphans.append(text.with_name(f".{text.name}.{dead.pid}.partial"))
    live = entry.with_name(f".{entry.name}.{os.getppid()}.partial")  # a writer that still runs
    for path in [*orphans, live]:
        path.write_bytes(b"half an entry")
    toy(max_train_steps=2, resume_from_checkpoint="latest")  # every entry is cached: nothing is encoded
    assert not any(p.exists() for p in orphans)
    assert live.exists(), "a live process's file is left alone"
    old = time.time() - 2 * 24 * 3600
    os.utime(live, (old, old))
    assert clean_cache_partials(cache) == 1 and not live.exists(), "unless it is days old (a reused process id)"


# -- quarantine stays inside the dataset ---------------------------------------------------


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


# -- secrets --------------------------------------------------------------------------------

SECRET = "s3cr3t-T0ken-xyz"


def test_a_webhook_url_urllib_rejects_is_never_printed(caplog):
    """urllib quotes only the URL's path when it refuses it: that rendering is a secret too."""
    urls = [f"http://127.0.0.1:9/api/webhooks/123/{SECRET} x", f"http://127.0.0.1:9/hook/{SECRET}\n",
            f"http://127.0.0.1:{SECRET}/x", f"http://user:{SECRET}@127.0.0.1:9/x"]
    for url in urls:
        delivery = Delivery(url, "webhook 1 (raw)", headers={"Authorization": f"Bearer {SECRET}"}, timeout=1, retries=0)
        with caplog.at_level(logging.WARNING):
            delivery.post(Post(json_body={"event": "start"}))
            delivery.stop(5)
            delivery.join()
    assert caplog.text.count("an event could not be delivered") == len(urls)
    assert "InvalidURL" in caplog.text, "urllib did refuse them"
    assert SECRET not in caplog.text and "s3cr3t" not in caplog.text


def test_the_scrubber_knows_every_rendering_of_a_url():
    url = f"https://discord.com/api/webhooks/123/{SECRET}?wait=true&key=k3y-{SECRET}"
    scrub = Scrubber([url], [f"Bearer tok-{SECRET}"])
    for text in (url, url.replace("/", "%2F"), repr(url), json.dumps(repr(url)), f"/api/webhooks/123/{SECRET}",
                 f"key=k3y-{SECRET}", f"tok-{SECRET}", f"'discord.com' said no to {SECRET}"):
        assert "s3cr3t" not in scrub(text), text
    assert scrub("step 4 of 10: loss 0.5") == "step 4 of 10: loss 0.5"


def test_webhook_urls_with_spaces_are_refused_without_echoing_them(tmp_path):
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    for url in (f"https://discord.com/api/webhooks/1/{SECRET} ", f"https://discord.com/{SECRET}\t/x",
                f"https://discord.com:{SECRET}/x"):
        (tmp_path / "w.json").write_text(json.dumps({"webhook_url": url}))
        with pytest.raises(ConfigError) as err:
            resolve_config({"webhook_config": "w.json"}, host, base_dir=tmp_path)
        assert "webhook_url" in str(err.value) and SECRET not in str(err.value)


def test_no_secret_reaches_a_log_tracker_or_model_card(toy, monkeypatch, caplog, capsys):
    """The token set as a prompt (careless, but possible) is masked in every file the run writes."""
    pytest.importorskip("tensorboard")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    (toy.folder / "webhook.json").write_text(json.dumps(
        {"webhook_url": f"http://127.0.0.1:9/hook/{SECRET}", "auth_token": f"tok-{SECRET}", "retries": 0, "timeout": 1}
    ))
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    cfg = toy_config(toy.folder, max_train_steps=2)
    cfg["validation"]["validation_prompt"] = f"a toy posted to http://127.0.0.1:9/hook/{SECRET}"
    cfg.update({"webhook_config": "webhook.json", "report_to": "tensorboard", "tracker_run_name": "r"})
    with caplog.at_level(logging.DEBUG):
        train(resolve_config(cfg, host, base_dir=toy.folder), host)
    out = toy.folder / "out"
    assert (out / "README.md").is_file() and list((out / "logs").rglob("events.out.tfevents.*"))
    assert "a toy posted to ***" in (out / "README.md").read_text()
    written = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix not in (".safetensors",))
    seen = caplog.text + "".join(capsys.readouterr())
    assert b"s3cr3t" not in written and "s3cr3t" not in seen


# -- crash injection: SIGKILL at every rename of a checkpoint write -------------------------

# One process imports everything once, then forks a child per kill point: each child trains and
# SIGKILLs itself at its point. Only the renames of checkpoint writes count (the adapter files inside
# one, the folder itself, a re-save's move aside).
_KILL_AT_RENAMES = """
import json, os, signal, sys
from pathlib import Path
from tuner.config import resolve_config
from tuner.plugins import PluginHost
from tuner.testing.toy import ToyFamily, toy_config
from tuner.train.run import train

def child(folder, index, when, options):
    real_replace, count = os.replace, 0

    def replace(src, dst):
        nonlocal count
        names = [Path(src).name, Path(src).parent.name, Path(dst).name, Path(dst).parent.name]
        if not any("checkpoint-" in name for name in names):
            return real_replace(src, dst)
        count += 1
        if count == index and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
        if count == index and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    cfg = toy_config(Path(folder), **options)
    cfg["validation"]["validation_prompt"] = None
    train(resolve_config(cfg, host), host)

jobs = json.loads(sys.argv[1])
# Warm up: train() imports its libraries lazily, and a child should not import them all again.
warm = dict(jobs[0]["options"], output_dir=str(Path(jobs[0]["folder"]) / "warm-up"))
warm.pop("resume_from_checkpoint", None)
child(jobs[0]["folder"], 0, "never", warm)
for job in jobs:
    pid = os.fork()
    if pid == 0:
        try:
            child(**job)
        finally:
            os._exit(3)  # the kill point was never reached
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    print(json.dumps({"folder": job["folder"], "killed": killed}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks a child per kill point")
def test_sigkill_at_every_rename_of_a_checkpoint_write_then_resume_matches_an_uninterrupted_run(toy, capsys):
    toy(name="straight", **CRASH_RUN)
    straight = toy.folder / "straight"
    # checkpoint-2 takes renames 1-3 (two adapters, then the folder); checkpoint-4 renames 4-6, then
    # rotation removes checkpoint-2. Kill before each rename of checkpoint-4's write, and after its last.
    # (rename, before or after it, the step the next start resumes from)
    points = [(4, "before", 2), (5, "before", 2), (6, "before", 2), (6, "after", 4)]
    # A finished run resumed from its last checkpoint saves that step again: the re-save renames
    # (two adapters, the old folder set aside, the new one in).
    resave = [(1, "before", 4), (2, "before", 4), (3, "before", 4), (4, "before", 4), (4, "after", 4)]
    jobs, starts = [], []
    for n, (index, when, start) in enumerate(points + resave):
        starts.append(start)
        folder = toy.folder / f"kill-{n}"
        write_synthetic_clips(folder / "clips", count=2, num_frames=3, width=16, height=16)
        options = dict(CRASH_RUN)
        if n >= len(points):
            shutil.copytree(straight, folder / "out")
            for name in ADAPTERS:
                (folder / "out" / name).unlink()  # the result must come from the resumed state
            options["resume_from_checkpoint"] = "latest"
        jobs.append({"folder": str(folder), "index": index, "when": when, "options": options})
    env = dict(os.environ)
    # The script forks after a warm-up run: with libgomp, a child forked from a process whose OpenMP
    # team exists hangs at its first parallel op. One thread: no team, and the tiny ops are too small
    # to be split across threads anyway (the results do not depend on it).
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILL_AT_RENAMES), json.dumps(jobs)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["killed"] for r in results] == [True] * len(jobs), done.stderr[-2000:]

    for job, start in zip(jobs, starts):
        folder, where = Path(job["folder"]), (job["index"], job["when"])
        host = PluginHost.build([], extra={"toy": ToyFamily()})
        cfg = toy_config(folder, **{**CRASH_RUN, "resume_from_checkpoint": "latest"})
        cfg["validation"]["validation_prompt"] = None
        capsys.readouterr()
        train(resolve_config(cfg, host), host)
        assert "skipping damaged" not in capsys.readouterr().err, where
        out = folder / "out"
        assert [r["start_step"] for r in read_log(out) if r["event"] == "start"][-1] == start, where
        assert _same_files(out, straight), where
        assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-4"], where
        a, b = read_checkpoint(out / "checkpoint-4")[0], read_checkpoint(straight / "checkpoint-4")[0]
        assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"])), where


def _full_disk(path: Path) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(path))


@pytest.mark.parametrize("victim", ["data report", "validation video"])
def test_a_full_disk_met_by_any_other_write_ends_in_one_line_naming_the_file(make_run, cli, monkeypatch, victim):
    """Writes without an option of their own (data report, media, cards) end in one line, not a traceback."""
    import tuner.media as media

    config = make_run(steps=1)  # its clips are written before the disk fills
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

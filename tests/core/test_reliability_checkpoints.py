"""Checkpoints: no code from them, damaged ones skipped, another run's never replaced, nothing lost in a crash.

The toy family keeps these fast; the crash-injection test kills real processes with SIGKILL.
"""

from __future__ import annotations

import hashlib
import json
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
from reliability_setup import ADAPTERS, file_tree, same_files, toy_runs

from tuner import hookimpl
from tuner.cache.store import clean_partials as clean_cache_partials
from tuner.config import resolve_config
from tuner.data.synthetic import write_synthetic_clips
from tuner.errors import CheckpointError, ConfigError
from tuner.plugins import PluginHost
from tuner.report.jsonlog import read_log
from tuner.testing.toy import ToyFamily, toy_config
from tuner.train.checkpoints import ADAPTER_FILE, checkpoint_problem, read_checkpoint
from tuner.train.run import train

# Four steps, a checkpoint every two, only one kept, EMA on: every rename a checkpoint write has.
CRASH_RUN = dict(max_train_steps=4, checkpoint_step_interval=2, checkpoints_total_limit=1, use_ema=True, ema_decay=0.5)


@pytest.fixture
def toy(tmp_path):
    """``toy(name, family=None, validation=False, **train_options)`` trains the toy family into ``tmp_path/name``."""
    return toy_runs(tmp_path)


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
    assert same_files(tmp_path / "resumed", tmp_path / "straight")
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
    assert same_files(out, toy.folder / "straight")


def test_a_damaged_checkpoint_named_explicitly_stops_before_the_model_loads(toy):
    toy(max_train_steps=2, checkpoint_step_interval=2)
    DAMAGE["truncated adapter"](toy.folder / "out" / "checkpoint-2")
    family = ToyFamily()
    with pytest.raises(CheckpointError) as err:
        toy(family=family, max_train_steps=4, resume_from_checkpoint=str(toy.folder / "out" / "checkpoint-2"))
    message = str(err.value)
    assert "\n" not in message and "checkpoint-2 cannot be used: pytorch_lora_weights.safetensors is" in message
    assert "load_model" not in family.calls


# -- a fresh run never replaces another run's checkpoints -------------------------------


def test_a_fresh_run_into_another_runs_checkpoints_stops_unless_told_to_overwrite(toy):
    toy(max_train_steps=4, checkpoint_step_interval=2)
    out = toy.folder / "out"
    before = file_tree(out)
    family = ToyFamily()
    with pytest.raises(ConfigError) as err:
        toy(family=family, max_train_steps=2)
    message = str(err.value)
    assert "\n" not in message and f"train.output_dir {out} holds another run's checkpoints" in message
    assert "resume_from_checkpoint = 'latest'" in message and "overwrite_output_dir = true" in message
    assert file_tree(out) == before and "load_model" not in family.calls, "refused before any work, nothing touched"

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
        assert same_files(out, straight), where
        assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-4"], where
        a, b = read_checkpoint(out / "checkpoint-4")[0], read_checkpoint(straight / "checkpoint-4")[0]
        assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"])), where

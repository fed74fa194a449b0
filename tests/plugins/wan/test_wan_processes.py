"""Two processes on the CPU (gloo), started through accelerate's launcher, on the tiny Wan model.

One 2-process run is shared: it must train exactly like one process accumulating twice as many
micro-batches, encode each cache entry once, and leave the writing to rank 0. Its checkpoint is
then resumed by two ``accelerate launch`` commands acting as two machines on localhost, and must
end where the uninterrupted run ended. A third run loses a process mid-run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tuner.report.jsonlog import read_log
from tuner.testing.runs import run_cli, write_run_folder
from tuner.train.checkpoints import ADAPTER_FILE, latest_checkpoint, read_checkpoint

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the launcher's processes in /proc"),
]

STEPS = 6


def _env() -> dict[str, str]:
    # gloo on the CPU: accelerate's --cpu flag would start one process (see docs/scale.md).
    return {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accelerate(config: Path, *sets: str, machines: tuple[int, int] | None = None, port: int) -> list[str]:
    """``accelerate launch`` of 2 processes of ``python -m tuner train`` (on ``machines[1]`` of ``machines[0]``)."""
    where = ["--num_machines", "1"]
    if machines is not None:
        count, rank = machines
        where = ["--num_machines", str(count), "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1"]
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", *where,
        "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "tuner", "train", "--config", str(config), *(f"--set={s}" for s in sets),
    ]  # fmt: skip


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / ADAPTER_FILE))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, tiny_model_dir):
    """A 6-step run of 4 clips in 2 processes (global batch 2: 2 steps per epoch), through ``tuner train --num-processes 2``."""
    folder = tmp_path_factory.mktemp("processes")
    config = write_run_folder(
        folder,
        tiny_model_dir("wan"),
        plugin="wan",
        steps=STEPS,
        clips=4,
        overrides=["train.output_dir=two", "train.checkpoint_step_interval=3", "validation.validation_step_interval=3"],
    )
    done = subprocess.run(
        [sys.executable, "-m", "tuner", "train", "--num-processes", "2", "--config", str(config)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return config, done


def test_two_processes_train_like_one_accumulating_their_micro_batches(two_processes):
    config, _ = two_processes
    one = run_cli(["train", "--config", str(config), "--set", "train.output_dir=one", "--set", "train.gradient_accumulation_steps=2"])
    assert one.exit_code == 0, one.stderr
    assert "2 process(es)" not in one.stderr and "x 1 process(es) x 2 accumulation = 2 samples" in one.stderr
    # The cache the two processes built is whole: one process reuses it and encodes nothing.
    assert "encoding" not in one.stderr
    _assert_same(_adapter(config.parent / "two"), _adapter(config.parent / "one"), atol=1e-6)
    two_losses = [r["loss"] for r in read_log(config.parent / "two") if r["event"] == "step"]
    one_losses = [r["loss"] for r in read_log(config.parent / "one") if r["event"] == "step"]
    assert two_losses == pytest.approx(one_losses, abs=1e-6)


def test_each_cache_entry_is_encoded_once(two_processes):
    _, done = two_processes
    # 4 clips; 4 captions + the empty prompt: each process encoded its own share.
    assert "cache: 4 clips encoded by 2 processes (2 + 2)" in done.stderr
    assert "cache: 5 captions encoded by 2 processes (3 + 2)" in done.stderr
    assert "global batch: 1 per micro-batch x 2 process(es) x 1 accumulation = 2 samples per step" in done.stderr


def test_only_rank_zero_writes(two_processes):
    config, done = two_processes
    out = config.parent / "two"
    events = [r["event"] for r in read_log(out)]
    assert events.count("start") == 1 and events.count("end") == 1 and events.count("step") == STEPS
    assert events.count("checkpoint") == 2 and events.count("validation") == 2  # steps 3 and 6
    assert done.stdout.count("done") == 1  # one process speaks for the run
    assert done.stderr.count("validation (step 3,") == 1
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert not list(out.glob(".*partial*"))
    _, info = read_checkpoint(out / "checkpoint-3")
    assert info["num_processes"] == 2 and info["micro_batches"] == 3 * 2


def test_two_machines_on_localhost_resume_the_run_exactly(two_processes):
    """Two ``accelerate launch`` commands (``--num_machines 2``, one process each) resume checkpoint-3."""
    config, _ = two_processes
    resumed = config.parent / "resumed"
    resumed.mkdir()
    shutil.copytree(config.parent / "two" / "checkpoint-3", resumed / "checkpoint-3")
    port = _port()
    sets = ("train.output_dir=resumed", "train.resume_from_checkpoint=latest", "validation.validation_step_interval=0")
    machines = [
        subprocess.Popen(
            _accelerate(config, *sets, machines=(2, rank), port=port),
            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    results = [m.communicate(timeout=300) for m in machines]
    for machine, (_, err) in zip(machines, results, strict=True):
        assert machine.returncode == 0, err[-4000:]
    assert "resumed from" in results[0][1]
    _assert_same(_adapter(resumed), _adapter(config.parent / "two"), atol=1e-7)


def test_resuming_on_another_number_of_processes_says_so(two_processes):
    config, _ = two_processes
    other = config.parent / "other"
    other.mkdir()
    shutil.copytree(config.parent / "two" / "checkpoint-3", other / "checkpoint-3")
    result = run_cli(
        ["train", "--config", str(config), "--set", "train.output_dir=other", "--set", "train.resume_from_checkpoint=latest"]
    )
    assert result.exit_code == 0, result.stderr
    assert "checkpoint-3 was written by 2 process(es), this run has 1" in " ".join(result.stderr.split())
    assert [r["step"] for r in read_log(other) if r["event"] == "step"] == [4, 5, 6]


def endless_run(tmp_path: Path, tiny_model_dir) -> Path:
    """A tiny Wan run that would go on for 100,000 steps, checkpointing every 2: a test stops it."""
    return write_run_folder(
        tmp_path,
        tiny_model_dir("wan"),
        plugin="wan",
        steps=100_000,
        overrides=["train.checkpoint_step_interval=2", "validation.validation_step_interval=0"],
    )


def wait_for_checkpoint(launcher: subprocess.Popen, checkpoint: Path) -> None:
    """Wait until ``checkpoint`` exists; the launcher ending first, or 240 s passing, fails with its stderr."""
    deadline = time.monotonic() + 240
    while not checkpoint.is_dir():
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()[1][-4000:]
        time.sleep(0.1)


def _ranks(launcher: subprocess.Popen) -> dict[int, int]:
    """``{rank: pid}`` of the processes accelerate's launcher started."""
    found: dict[int, int] = {}
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    for pid in map(int, children):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next(e for e in environ if e.startswith(b"RANK="))
        found[int(rank[5:])] = pid
    return found


def test_a_rank_that_dies_stops_the_other_and_the_checkpoint_survives(tmp_path, tiny_model_dir):
    config = endless_run(tmp_path, tiny_model_dir)
    out = tmp_path / "output"
    launcher = subprocess.Popen(
        _accelerate(config, "distributed.process_group_timeout=30", port=_port()),
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_checkpoint(launcher, out / "checkpoint-4")
        ranks = _ranks(launcher)
        os.kill(ranks[1], signal.SIGKILL)
        killed = time.monotonic()
        _, err = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert time.monotonic() - killed < 60
    assert launcher.returncode != 0
    assert not Path(f"/proc/{ranks[0]}").exists()  # rank 0 is gone too (it is the launcher's child: reaped)
    # The survivor says what happened in one line (or was stopped by the launcher, which says so).
    assert "error: process 0 of 2 stopped" in err or "SIGTERM" in err, err[-3000:]
    last = latest_checkpoint(out)
    assert last is not None
    state, info = read_checkpoint(last)
    assert info["step"] >= 4 and len(state["params"]) > 0
    assert load_file(str(last / ADAPTER_FILE))

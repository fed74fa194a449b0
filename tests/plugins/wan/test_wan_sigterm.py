"""SIGTERM to a 2-process run on the CPU (gloo), as Docker or Kubernetes send it to the launcher.

accelerate's launcher passes the signal on to both processes; they stop after the same step, the
main one saves it, each says so in one line, and the run resumes from that step.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from test_wan_processes import _env, endless_run, wait_for_checkpoint

from tuner.report.jsonlog import read_log
from tuner.testing.runs import run_cli
from tuner.train.checkpoints import latest_checkpoint, read_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")]


def test_sigterm_stops_every_process_after_the_same_step_saved_and_the_run_resumes(tmp_path, tiny_model_dir):
    config = endless_run(tmp_path, tiny_model_dir)
    out = tmp_path / "output"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "tuner", "train", "--num-processes", "2", "--config", str(config)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_checkpoint(launcher, out / "checkpoint-2")
        launcher.send_signal(signal.SIGTERM)
        _, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 128 + signal.SIGTERM, err[-4000:]
    assert "Traceback" not in err, err[-4000:]
    reached = [r["step"] for r in read_log(out) if r["event"] == "step"][-1]
    last = latest_checkpoint(out)
    assert last == out / f"checkpoint-{reached}", err[-4000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert any(line.startswith("error: process 0 of 2 stopped by SIGTERM") and f"{last} holds the last step" in line
               for line in errors), errors  # fmt: skip
    assert any(line.startswith("error: process 1 of 2 stopped by SIGTERM") for line in errors), errors
    assert errors[-1].startswith("error: stopped by SIGTERM: passed on to the 2 processes"), err[-3000:]
    assert read_checkpoint(last)[1]["num_processes"] == 2

    resumed = run_cli(["train", "--config", str(config), "--set", "train.resume_from_checkpoint=latest",
                       "--set", f"train.max_train_steps={reached + 1}"])  # fmt: skip
    assert resumed.exit_code == 0, resumed.stderr
    log = read_log(out)
    assert [r["start_step"] for r in log if r["event"] == "start"][-1] == reached
    assert [r["step"] for r in log if r["event"] == "step"][-1] == reached + 1

"""Long waits show progress off a terminal too: plain lines with a rate and the time left (ETA)."""

from __future__ import annotations

import re
import time

import pytest

from tuner import progress
from tuner.progress import TrainProgress, eta_text, stage, task_progress


@pytest.fixture
def every_line(monkeypatch):
    """Lines as often as the work moves (the real gaps, 2 s and 10 s, would make the test slow)."""
    monkeypatch.setattr(progress, "PLAIN_GAP_S", 0.0)
    progress.set_log_format("auto")


def test_eta_text():
    assert [eta_text(s) for s in (0, 4.4, 59.6, 61, 3599, 3600 * 2 + 65)] == ["0s", "4s", "1m00s", "1m01s", "59m59s", "2h01m"]


def test_a_task_off_a_terminal_logs_plain_lines_with_rate_and_eta(every_line, capsys):
    with task_progress("encoding clips", 40, unit="clips") as advance:
        for _ in range(40):
            time.sleep(0.005)
            advance(1)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    moving = [line for line in lines if re.fullmatch(r"encoding clips: \d+/40 clips, [\d.]+ clips/s, ETA \d+s", line)]
    assert len(moving) == 19, lines  # every 5% (2 clips), the last one said by the closing line
    assert [int(re.search(r": (\d+)/", line).group(1)) for line in moving] == list(range(2, 40, 2))
    assert re.fullmatch(r"encoding clips: 40/40 clips in [\d.]+s", lines[-1])


def test_slow_items_say_seconds_per_item_and_a_long_eta(every_line, capsys):
    with task_progress("validation (step 5, 1 clip(s))", 3, unit="steps") as advance:
        advance(1)
        progress_line = capsys.readouterr().err.strip()
    assert re.fullmatch(r"validation \(step 5, 1 clip\(s\)\): 1/3 steps, [\d.]+ steps/s, ETA \d+s", progress_line)


def test_a_quick_task_prints_only_its_closing_line(capsys):
    progress.set_log_format("auto")
    with task_progress("encoding captions", 100, unit="captions") as advance:
        for _ in range(100):
            advance(1)
    assert re.fullmatch(r"encoding captions: 100/100 captions in [\d.]+s\n", capsys.readouterr().err)


def test_quiet_and_json_print_no_progress(capsys):
    for mode in ("quiet", "json"):
        progress.set_log_format(mode)
        with task_progress("encoding clips", 2, unit="clips") as advance, stage("loading vae"):
            advance(2)
    progress.set_log_format("auto")
    assert capsys.readouterr().err == ""


def test_a_stage_says_what_is_being_waited_on_and_how_long_it_took(capsys):
    progress.set_log_format("auto")
    with stage("loading transformer from Wan-AI/Wan2.1-T2V-1.3B-Diffusers"):
        pass
    assert capsys.readouterr().err == "loading transformer from Wan-AI/Wan2.1-T2V-1.3B-Diffusers ...\n"
    with stage("loading vae"):
        time.sleep(1.0)
    assert re.fullmatch(r"loading vae \.\.\.\nloading vae: done in 1\.\ds\n", capsys.readouterr().err)


def test_training_lines_off_a_terminal_carry_the_eta(capsys):
    progress.set_log_format("auto")
    with TrainProgress(total=40, start=0) as bar:
        for step in range(1, 41):
            bar.update(step, {"loss": 0.5, "lr": 1e-4, "step_time": 0.01})
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 20
    assert all(re.fullmatch(r"step \d+/40  loss 0\.5000  lr 1\.00e-04  0\.010 s/it  ETA \d+s", line) for line in lines)
    assert lines[-1].startswith("step 40/40") and lines[-1].endswith("ETA 0s")

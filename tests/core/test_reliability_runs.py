"""A run and the folders around it: one run per output folder, never over the user's files or inside
the inputs, and SIGTERM saved like Ctrl-C. Real second processes, real signals (see docs/reliability.md)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import Field

from tuner import hookimpl
from tuner.config import resolve_config
from tuner.data.synthetic import write_synthetic_clips
from tuner.errors import ConfigError
from tuner.plugins import PluginHost
from tuner.report.jsonlog import read_log
from tuner.testing.toy import ToyFamily, ToySection, toy_config
from tuner.train.checkpoints import latest_checkpoint, read_checkpoint
from tuner.train.run import train

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock and signals as on Linux")

HERE = Path(__file__).parent
LONG = dict(max_train_steps=100_000, checkpoint_step_interval=2, checkpoints_total_limit=2)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    return tmp_path


def _start(folder: Path, **options) -> subprocess.Popen[str]:
    """A toy training run in a process of its own (`toy_cli.py`), ending as ``tuner train`` ends."""
    return subprocess.Popen(
        [sys.executable, str(HERE / "toy_cli.py"), str(folder), json.dumps(options)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 120) -> None:
    """Wait for ``path`` (``.../checkpoint-N``) or a later checkpoint: on an idle machine the toy run
    rotates ``checkpoint-N`` away (checkpoints_total_limit) within milliseconds of writing it."""
    deadline = time.monotonic() + timeout
    wanted = int(path.name.removeprefix("checkpoint-"))

    def reached() -> bool:
        steps = [p.name.removeprefix("checkpoint-") for p in path.parent.glob("checkpoint-*")]
        return any(s.isdigit() and int(s) >= wanted for s in steps)

    while not reached():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} (or a later checkpoint) never appeared"
        time.sleep(0.05)


def _finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = process.communicate(timeout=120)
    return process.returncode, err


def _last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


def _toy_run(folder: Path, **options):
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    cfg = toy_config(folder, **options)
    cfg["validation"]["validation_prompt"] = None
    return resolve_config(cfg, host), host


# -- two runs, one output folder -------------------------------------------------------------------


def test_a_second_run_into_a_held_output_folder_stops_in_one_line_naming_the_first(folder):
    first = _start(folder, **LONG)
    try:
        _wait_for(folder / "out" / "checkpoint-2", first)
        second = _start(folder, **LONG, resume_from_checkpoint="latest")
        code, err = _finish(second)
        assert code == 2, err[-3000:]
        line = _last_line(err)
        assert line.startswith(f"error: train.output_dir {folder / 'out'} is in use by another tuner run (process"
                               f" {first.pid} on {socket.gethostname()}, started ")  # fmt: skip
        assert "Traceback" not in err and err.count("\n") == 1
        assert first.poll() is None, "the first run goes on"
    finally:
        first.kill()
        first.wait()
    # The lock died with the process that held it (SIGKILL: no clean-up ran).
    train(*_toy_run(folder, max_train_steps=3, resume_from_checkpoint="latest"))
    assert [r["event"] for r in read_log(folder / "out")][-1] == "end"


# -- outputs over inputs ----------------------------------------------------------------------------


def test_a_run_never_replaces_a_file_it_did_not_write(folder):
    (folder / "README.md").write_text("my project\n")
    config, host = _toy_run(folder, max_train_steps=1, output_dir=str(folder))  # output_dir = "." of the project
    with pytest.raises(ConfigError) as err:
        train(config, host)
    message = str(err.value)
    assert "\n" not in message and f"train.output_dir {folder} holds README.md, which tuner did not write" in message
    assert (folder / "README.md").read_text() == "my project\n"
    assert not list(folder.glob("checkpoint-*")), "refused before any work"

    # tuner's own files, it replaces: a second run into its own folder writes its card again.
    out = folder / "out"
    for _ in range(2):
        config, host = _toy_run(folder, max_train_steps=1, output_dir=str(out), overwrite_output_dir=True)
        train(config, host)
    # A folder of a version that kept no record: its own train_log.jsonl vouches for the names it wrote.
    (out / ".tuner-outputs.json").unlink()
    train(*_toy_run(folder, max_train_steps=1, output_dir=str(out), overwrite_output_dir=True))
    assert (out / "README.md").is_file(), "its own card, written again each run"
    (out / "pytorch_lora_weights_ema.safetensors").write_bytes(b"someone else's adapter")
    with pytest.raises(ConfigError, match="holds pytorch_lora_weights_ema.safetensors, which tuner did not write"):
        train(*_toy_run(folder, max_train_steps=1, output_dir=str(out), overwrite_output_dir=True))


class _ToyModelSection(ToySection):
    pretrained_model_name_or_path: str | None = Field(None, description="A local model folder.")


class _ToyWithModel(ToyFamily):
    """A family whose section names its model folder as Wan's and Flux's do (the Hugging Face convention)."""

    @hookimpl
    def register_config_sections(self, register):  # type: ignore[override]
        register("toy", _ToyModelSection)


@pytest.mark.parametrize(
    "where, option, inside",
    [
        ("output inside the dataset", "output_dir", "clips/out"),
        ("output is the dataset", "output_dir", "clips"),
        ("cache inside the dataset", "cache_dir", "clips/.cache"),
        ("output is the model folder", "output_dir", "model"),
        ("cache inside the model folder", "cache_dir", "model/cache"),
    ],
)
def test_outputs_and_caches_never_lie_inside_the_data_or_the_model(folder, where, option, inside):
    model = folder / "model"
    model.mkdir()
    (model / "README.md").write_text("the model's own card\n")
    family = _ToyWithModel()
    host = PluginHost.build([], extra={"toy": family})
    cfg = toy_config(folder, max_train_steps=1)
    cfg["validation"]["validation_prompt"] = None
    cfg["toy"] = {"pretrained_model_name_or_path": str(model)}
    if option == "output_dir":
        cfg["train"]["output_dir"] = str(folder / inside)
    else:
        cfg["data"]["cache_dir"] = str(folder / inside)
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    with pytest.raises(ConfigError) as err:
        train(resolve_config(cfg, host), host)
    message = str(err.value)
    assert "\n" not in message and f"{folder / inside} lies inside the " in message, where
    assert ("dataset 'data'" if inside.startswith("clips") else "model folder toy.pretrained_model_name_or_path") in message
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before, "nothing written"
    assert "load_model" not in family.calls and (model / "README.md").read_text() == "the model's own card\n"


# -- SIGTERM as Ctrl-C --------------------------------------------------------------------------------


def test_sigterm_saves_the_step_reached_and_the_run_resumes_from_it(folder):
    run = _start(folder, **LONG)
    _wait_for(folder / "out" / "checkpoint-4", run)
    run.send_signal(signal.SIGTERM)
    code, err = _finish(run)
    assert code == 128 + signal.SIGTERM, err[-3000:]
    out = folder / "out"
    last = latest_checkpoint(out)
    reached = [r["step"] for r in read_log(out) if r["event"] == "step"][-1]
    assert last == out / f"checkpoint-{reached}", "the step reached is saved, not only the last interval's"
    assert _last_line(err) == (
        f"error: stopped by SIGTERM; {last} holds the last step saved: resume with resume_from_checkpoint = 'latest'"
    )
    assert "Traceback" not in err and read_checkpoint(last)[1]["step"] == reached
    assert [r for r in read_log(out) if r["event"] == "end"][-1]["error"].startswith("Interrupted(")

    train(*_toy_run(folder, **dict(LONG, max_train_steps=reached + 2), resume_from_checkpoint="latest"))
    log = read_log(out)
    assert [r["start_step"] for r in log if r["event"] == "start"] == [0, reached]
    assert [r["step"] for r in log if r["event"] == "step"][-3:] == [reached, reached + 1, reached + 2]

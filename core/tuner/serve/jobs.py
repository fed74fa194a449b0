"""Runs started from the Start page: the same ``tuner train`` process a terminal starts.

The config is checked first with ``tuner config show`` in a child process (a bad
config answers the form with its one-line error, and the resolved
``output_dir`` says which run folder the job will write). The training process
runs in its own process group with its output captured to
``FOLDER/.tuner-serve/<job>.log``; Stop sends SIGINT to that group, exactly what
Ctrl-C in a terminal does, so the run saves a checkpoint of its last step.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tuner.serve.folder import RunFolder

__all__ = ["Job", "Jobs", "JobError"]

JOBS_FOLDER = ".tuner-serve"  # hidden: the run walk skips it
_CHECK_SECONDS = 180
_TAIL_BYTES = 64_000


class JobError(Exception):
    """A start the form refuses, with the line to show."""


@dataclass
class Job:
    id: str
    config: Path
    sets: list[str]
    run_id: str
    log_path: Path
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.time)
    stop_requested: float | None = None

    def describe(self) -> dict[str, Any]:
        code = self.process.poll()
        return {
            "id": self.id,
            "config": str(self.config),
            "sets": self.sets,
            "run_id": self.run_id,
            "pid": self.process.pid,
            "started": self.started,
            "running": code is None,
            "exit_code": code,
            "stop_requested": self.stop_requested,
        }

    def console(self) -> str:
        """The last lines the process printed (stdout and stderr together)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - _TAIL_BYTES))
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""


def _python_tuner(*args: str) -> list[str]:
    return [sys.executable, "-m", "tuner", *args]


def _resolved_output_dir(config: Path, sets: list[str]) -> Path:
    """``train.output_dir`` as the run will resolve it; a bad config raises `JobError` with tuner's own line."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    args = _python_tuner("config", "show", "--config", str(config), *[f"--set={s}" for s in sets])
    try:
        done = subprocess.run(args, capture_output=True, timeout=_CHECK_SECONDS, cwd=config.parent, check=False)
    except subprocess.TimeoutExpired:
        raise JobError(f"checking {config} took over {_CHECK_SECONDS} s") from None
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", errors="replace").strip().splitlines()
        raise JobError(lines[-1] if lines else f"tuner config show exited with code {done.returncode}")
    try:
        resolved = tomllib.loads(done.stdout.decode("utf-8"))
        return Path(resolved["train"]["output_dir"])
    except (ValueError, KeyError, TypeError):
        raise JobError(f"could not read the resolved config of {config}") from None


class Jobs:
    """The training processes this server started; each is listed until the server stops."""

    def __init__(self, folder: RunFolder) -> None:
        self.folder = folder
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def start(self, config_text: str, sets: list[str]) -> Job:
        """Check the config, then start ``tuner train`` on it; `JobError` says why not."""
        config = Path(os.path.expanduser(config_text.strip()))
        if not config_text.strip():
            raise JobError("give the path of a config file (.toml or .json)")
        if not config.is_absolute():
            config = self.folder.root / config  # a path typed in the form is read from the served folder
        if not config.is_file():
            raise JobError(f"no config file at {config}")
        sets = [s.strip() for s in sets if s.strip()]
        bad = [s for s in sets if "=" not in s]
        if bad:
            raise JobError(f"an override is KEY=VALUE (e.g. train.max_train_steps=100), got '{bad[0]}'")
        output_dir = _resolved_output_dir(config, sets)
        run_dir = self.folder.resolve(os.path.relpath(output_dir, self.folder.root)) if output_dir.is_absolute() else None
        if run_dir is None or run_dir != output_dir.resolve():
            raise JobError(
                f"this config writes to {output_dir}, outside the served folder {self.folder.root}:"
                " set train.output_dir under it (e.g. add the override train.output_dir=...)"
            )
        with self._lock:
            running = [j for j in self._jobs.values() if j.run_id == self.folder.rel(run_dir) and j.process.poll() is None]
            if running:
                raise JobError(f"job {running[0].id} is already training into {output_dir}: stop it first")
            job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{next(self._ids)}"
            logs = self.folder.root / JOBS_FOLDER
            try:
                logs.mkdir(exist_ok=True)
                log_file: IO[bytes] = open(logs / f"{job_id}.log", "wb")
            except OSError as exc:
                raise JobError(f"cannot write the job's console log in {logs}: {exc.strerror}") from None
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            with log_file:
                process = subprocess.Popen(
                    _python_tuner("train", "--config", str(config), *[f"--set={s}" for s in sets]),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=config.parent,
                    env=env,
                    start_new_session=True,  # its own process group: Stop signals it (and its workers) alone
                )
            job = Job(job_id, config, sets, self.folder.rel(run_dir), logs / f"{job_id}.log", process)
            self._jobs[job_id] = job
            return job

    def stop(self, job_id: str) -> Job | None:
        """Ctrl-C the job's process group; None for an unknown job."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.process.poll() is None:
            job.stop_requested = time.time()
            try:
                os.killpg(job.process.pid, signal.SIGINT)
            except ProcessLookupError:  # it ended between the poll and the signal
                pass
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def for_run(self, run_id: str) -> Job | None:
        """The newest job writing into ``run_id``."""
        jobs = [j for j in self._jobs.values() if j.run_id == run_id]
        return max(jobs, key=lambda j: j.started) if jobs else None

    def all(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: -j.started)

    def close(self) -> None:
        """Reap finished children (running ones keep training when the server stops, like a detached terminal)."""
        for job in self._jobs.values():
            job.process.poll()

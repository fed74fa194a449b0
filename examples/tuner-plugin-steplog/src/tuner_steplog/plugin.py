"""Write one JSON line per optimizer step to ``steps.jsonl``.

This module is the ``tuner.plugins`` entry point. It names `plugin`, an
instance of `StepLog`: pluggy registers an object's marked methods as its
hooks, so the open files live on that instance rather than in module globals.
Only pydantic and tuner's hook marker are imported here, never torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from tuner import hookimpl

if TYPE_CHECKING:
    from tuner.types.training import RunInfo

__all__ = ["SECTION", "DEFAULT_NAME", "StepLogSection", "StepLog", "plugin"]

SECTION = "steplog"
DEFAULT_NAME = "steps.jsonl"


class StepLogSection(BaseModel):
    """One JSON line per optimizer step (loss, lr and what the model family logs), to plot or tail."""

    # A mistyped key must be an error, not an option silently ignored.
    model_config = ConfigDict(extra="forbid")

    steplog_path: Path | None = Field(
        None,
        description="File the step lines go to (truncated at the start of each run); unset means steps.jsonl in"
        " the run's output_dir. A relative path is read from the config file's folder.",
    )
    steplog_every: int = Field(1, ge=1, description="Write a line every N optimizer steps.")


@dataclass
class _OpenLog:
    file: IO[str]
    every: int


class StepLog:
    """The plugin: writes the step lines of each run it sees."""

    def __init__(self) -> None:
        # One entry point object is shared by every host in a process, so the
        # state is per run. RunInfo is unhashable; the same object is passed
        # to every hook of a run and lives until on_run_end, so its id is a
        # safe key for that long.
        self._logs: dict[int, _OpenLog] = {}

    @hookimpl
    def register_config_sections(self, register: Any) -> None:
        register(SECTION, StepLogSection)

    # pluggy passes a hook only the arguments its implementation names, so
    # each method takes just what it uses.

    @hookimpl
    def on_run_start(self, run: RunInfo) -> None:
        options: StepLogSection = run.config.section(SECTION)
        path = options.steplog_path or Path(run.output_dir) / DEFAULT_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        self._close(run)
        self._logs[id(run)] = _OpenLog(path.open("w", encoding="utf-8"), options.steplog_every)

    @hookimpl
    def on_step_end(self, run: RunInfo, step: int, logs: dict[str, float]) -> None:
        log = self._logs.get(id(run))
        if log is not None and step % log.every == 0:
            _write(log.file, {"step": step, **logs})

    @hookimpl
    def on_run_end(self, run: RunInfo, error: BaseException | None) -> None:
        log = self._logs.get(id(run))
        if log is not None:
            _write(log.file, {"event": "end", "error": repr(error) if error is not None else None})
        self._close(run)

    def _close(self, run: RunInfo) -> None:
        log = self._logs.pop(id(run), None)
        if log is not None:
            log.file.close()


def _write(file: IO[str], record: dict[str, Any]) -> None:
    # Flushed per line, so the file can be tailed and survives a crash.
    file.write(json.dumps(record, default=str) + "\n")
    file.flush()


# What the entry point names.
plugin = StepLog()

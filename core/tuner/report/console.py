"""What a run prints: the ``[console]`` section, and JSON lines on stdout for scripts.

A built-in lifecycle plugin. In ``json`` mode every event of the run (the same
records as ``train_log.jsonl``) is printed to stdout as one JSON object per
line, and no progress bar is drawn; ``quiet`` prints neither.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field

from tuner.hookspecs import hookimpl
from tuner.progress import LogFormat
from tuner.report.jsonlog import EventLog

__all__ = ["ConsoleSection", "ConsoleLog"]


class ConsoleSection(BaseModel):
    """What the run prints while it works."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    log_format: LogFormat = Field(
        "auto",
        description="auto: progress bars on a terminal, a few plain lines elsewhere; quiet: no progress, only"
        " warnings and errors; json: every event as a JSON line on stdout (for scripts), no progress bars.",
    )


class ConsoleLog(EventLog):
    """Prints the run's events to stdout in ``json`` mode."""

    @hookimpl
    def register_config_sections(self, register: Any) -> None:
        register("console", ConsoleSection)

    def _open(self, run: Any) -> IO[str] | None:
        return sys.stdout if run.config.section("console").log_format == "json" else None

    def _close(self, file: IO[str]) -> None:
        file.flush()  # stdout stays open

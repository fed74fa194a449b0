"""The run's event log: ``output_dir/train_log.jsonl``, one JSON object per line.

A built-in lifecycle plugin. Scripts and tests read the loss curve from it; a
resumed run appends, so the file tells the whole story of an output folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

from tuner.hookspecs import hookimpl

__all__ = ["LOG_NAME", "JsonLog", "read_log"]

LOG_NAME = "train_log.jsonl"


def read_log(output_dir: Path) -> list[dict[str, Any]]:
    path = output_dir / LOG_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class JsonLog:
    """Appends every lifecycle event of a run to its log file."""

    def __init__(self) -> None:
        self._file: IO[str] | None = None

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"time": round(time.time(), 3), **record}, default=str) + "\n")
            self._file.flush()

    @hookimpl
    def on_run_start(self, run: Any) -> None:
        run.output_dir.mkdir(parents=True, exist_ok=True)
        self._file = (run.output_dir / LOG_NAME).open("a", encoding="utf-8")
        self._write({"event": "start", "start_step": run.start_step, "max_train_steps": run.max_train_steps})

    @hookimpl
    def on_step_end(self, run: Any, step: int, logs: dict[str, float]) -> None:
        self._write({"event": "step", "step": step, **logs})

    @hookimpl
    def on_checkpoint_saved(self, run: Any, step: int, path: Path) -> None:
        self._write({"event": "checkpoint", "step": step, "path": str(path)})

    @hookimpl
    def on_validation_done(self, run: Any, result: Any) -> None:
        self._write({"event": "validation", "step": result.step, "media": {k: str(v) for k, v in result.media.items()}})

    @hookimpl
    def on_run_end(self, run: Any, outputs: dict[str, Path], error: BaseException | None) -> None:
        self._write({"event": "end", "outputs": {k: str(v) for k, v in outputs.items()}, "error": repr(error) if error else None})
        if self._file is not None:
            self._file.close()
            self._file = None

"""The run's event log: ``output_dir/train_log.jsonl``, one JSON object per line.

A built-in lifecycle plugin. Scripts and tests read the loss curve from it; a
resumed run appends, so the file tells the whole story of an output folder.
`EventLog` builds the records; `JsonLog` writes them to the file, and the
console plugin writes the same records to stdout in ``json`` log mode.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

from tuner.hookspecs import hookimpl
from tuner.outputs import LOG_NAME, claim
from tuner.report.secrets import Scrubber, run_scrubber

__all__ = ["EventLog", "JsonLog", "read_log"]


def read_log(output_dir: Path) -> list[dict[str, Any]]:
    path = output_dir / LOG_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class EventLog:
    """Turns every lifecycle event of a run into one JSON line; subclasses say where it goes."""

    def __init__(self) -> None:
        self._file: IO[Any] | None = None
        self._scrub = Scrubber()

    def _open(self, run: Any) -> IO[Any] | None:
        raise NotImplementedError

    def _close(self, file: IO[Any]) -> None:
        file.close()

    def _clean(self, value: Any) -> Any:
        """``value`` with no secret in any string (an error message may quote a webhook URL)."""
        if isinstance(value, dict):
            return {k: self._clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._clean(v) for v in value]
        return self._scrub(value) if isinstance(value, str) else value

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            # JSON escapes every control character: a file name cannot start a line of its own.
            self._emit(json.dumps(self._clean({"time": round(time.time(), 3), **record}), default=str))

    def _emit(self, line: str) -> None:
        assert self._file is not None
        self._file.write(line + "\n")
        self._file.flush()

    @hookimpl
    def on_run_start(self, run: Any) -> None:
        self._scrub = run_scrubber(run.config)
        self._file = self._open(run)
        # The family and the resolved config ride on the start record so a run folder describes itself
        # (`tuner serve` shows them for runs copied from elsewhere); secrets are scrubbed by `_write`.
        config = run.config.to_dict() if hasattr(run.config, "to_dict") else None
        self._write(
            {
                "event": "start",
                "start_step": run.start_step,
                "max_train_steps": run.max_train_steps,
                "family": run.family,
                "base_model": run.base_model,
                "config": config,
            }
        )

    @hookimpl
    def on_step_end(self, run: Any, step: int, logs: dict[str, float]) -> None:
        self._write({"event": "step", "step": step, **logs})

    @hookimpl
    def on_checkpoint_saved(self, run: Any, step: int, path: Path) -> None:
        self._write({"event": "checkpoint", "step": step, "path": str(path)})

    @hookimpl
    def on_validation_done(self, run: Any, result: Any) -> None:
        record = {"event": "validation", "step": result.step, "media": {k: str(v) for k, v in result.media.items()}}
        if result.previews:  # validation_preview: media key -> sampler step -> file
            record["previews"] = {k: {str(s): str(p) for s, p in v.items()} for k, v in result.previews.items()}
        if result.contact_sheet is not None:
            record["contact_sheet"] = str(result.contact_sheet)
        self._write(record)

    @hookimpl
    def on_run_end(self, run: Any, outputs: dict[str, Path], error: BaseException | None) -> None:
        try:
            self._write({"event": "end", "outputs": {k: str(v) for k, v in outputs.items()}, "error": repr(error) if error else None})
        except Exception as exc:
            from tuner.durable import is_disk_full

            if error is None or not is_disk_full(exc):
                raise  # a run that failed (often on this same full disk) keeps its own error
        if self._file is not None:
            self._close(self._file)
            self._file = None


class JsonLog(EventLog):
    """Appends every lifecycle event of a run to ``output_dir/train_log.jsonl``."""

    def _open(self, run: Any) -> IO[bytes]:
        run.output_dir.mkdir(parents=True, exist_ok=True)
        claim(run.output_dir / LOG_NAME)
        return (run.output_dir / LOG_NAME).open("ab", buffering=0)

    def _emit(self, line: str) -> None:
        from tuner.durable import append_whole

        assert self._file is not None
        append_whole(self._file, (line + "\n").encode("utf-8"))

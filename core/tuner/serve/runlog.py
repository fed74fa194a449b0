"""Reading a run's ``train_log.jsonl`` while it is still being written.

The log is read incrementally: each refresh reads only the bytes added since
the last one, and only up to the last newline, so a line the trainer is half
way through writing is left for the next refresh instead of failing to parse.
A log that shrank or was replaced (a run started afresh over an old one) is
read again from the start. Step records go into flat float arrays (one per
metric) so a run of 100k steps costs a few MB and is downsampled with numpy.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from array import array
from bisect import bisect_left
from pathlib import Path
from typing import Any

__all__ = ["RunLog", "STALE_SECONDS"]

# A run with no end record whose log has not changed for this long is taken as
# interrupted (killed, crashed, or copied mid-run): a step or a validation round
# of a 14B model takes minutes, never half an hour.
STALE_SECONDS = 30 * 60
_READ_CHUNK = 8 << 20  # a 100k-step log is ~20 MB: read it in a few gulps, never all at once


class RunLog:
    """The records of one ``train_log.jsonl``, kept up to date by `refresh`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()  # held while refreshing: requests run in a thread pool
        self._reset(None)

    def _reset(self, ident: tuple[int, int] | None) -> None:
        self._ident = ident
        self.offset = 0
        self.mtime = 0.0
        self.steps: array[int] = array("q")
        self.times: array[float] = array("d")
        self.metrics: dict[str, array[float]] = {}
        self.events: list[dict[str, Any]] = []  # every record but steps, in order
        self.bad_lines = 0

    def refresh(self) -> bool:
        """Read what was added since the last call; True when anything was. Raises `OSError` when the log is gone."""
        st = os.stat(self.path)
        ident = (st.st_dev, st.st_ino)
        if ident != self._ident or st.st_size < self.offset:
            self._reset(ident)
        self.mtime = st.st_mtime
        if st.st_size == self.offset:
            return False
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            while self.offset < st.st_size:
                chunk = f.read(min(_READ_CHUNK, st.st_size - self.offset))
                end = chunk.rfind(b"\n")
                if end < 0:
                    break  # a half-written line: read it once it ends
                for line in chunk[: end + 1].splitlines():
                    self._add(line)
                self.offset += end + 1
                f.seek(self.offset)
        return True

    def _add(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            record = json.loads(line)
        except ValueError:
            self.bad_lines += 1
            return
        if not isinstance(record, dict):
            self.bad_lines += 1
            return
        if record.get("event") == "step" and isinstance(record.get("step"), int):
            self._add_step(record)
        else:
            self.events.append(record)

    def _add_step(self, record: dict[str, Any]) -> None:
        step = record["step"]
        if self.steps and step <= self.steps[-1]:
            # A resumed run repeats the steps after its checkpoint: the later telling wins.
            keep = bisect_left(self.steps, step)
            del self.steps[keep:], self.times[keep:]
            for values in self.metrics.values():
                del values[keep:]
        n = len(self.steps)
        self.steps.append(step)
        self.times.append(_number(record.get("time")))
        for key, value in record.items():
            if key in ("event", "step", "time") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if key not in self.metrics:
                self.metrics[key] = array("d", [math.nan] * n)
            self.metrics[key].append(float(value))
        for values in self.metrics.values():
            if len(values) == n:  # a metric this record did not carry
                values.append(math.nan)

    # -- what the pages show -------------------------------------------------

    def last(self, event: str) -> dict[str, Any] | None:
        for record in reversed(self.events):
            if record.get("event") == event:
                return record
        return None

    def since_last_start(self) -> list[dict[str, Any]]:
        for i in range(len(self.events) - 1, -1, -1):
            if self.events[i].get("event") == "start":
                return self.events[i:]
        return list(self.events)

    def state(self, now: float | None = None) -> str:
        """running, finished, stopped, failed or interrupted, from what the run wrote (see docs/serve.md)."""
        events = self.since_last_start()
        if not events and not self.steps:
            return "starting"
        end = next((r for r in reversed(events) if r.get("event") == "end"), None)
        if end is None:
            age = (now or time.time()) - self.mtime
            return "running" if age < STALE_SECONDS else "interrupted"
        error = str(end.get("error") or "")
        if not error:
            return "finished"
        # Ctrl-C, or SIGTERM/SIGINT during a run (`tuner.train.stop.Interrupted`, a KeyboardInterrupt)
        return "stopped" if error.startswith(("KeyboardInterrupt", "Interrupted")) else "failed"

    def summary(self) -> dict[str, Any]:
        """The Runs table's row: state, step/total, ETA, last loss, start and end times."""
        start, first = self.last("start"), next((r for r in self.events if r.get("event") == "start"), None)
        end = next((r for r in reversed(self.since_last_start()) if r.get("event") == "end"), None)
        state = self.state()
        step = self.steps[-1] if self.steps else (start or {}).get("start_step", 0)
        total = (start or {}).get("max_train_steps")
        loss = self.metrics.get("loss")
        last_loss = next((v for v in reversed(loss[-50:]) if not math.isnan(v)), None) if loss else None
        eta = None
        step_time = self.metrics.get("step_time")
        if state == "running" and isinstance(total, int) and step_time and total > step:
            recent = [v for v in step_time[-50:] if not math.isnan(v)]
            if recent:
                eta = (total - step) * sum(recent) / len(recent)
        return {
            "state": state,
            "step": step,
            "total": total,
            "eta_s": eta,
            "last_loss": last_loss,
            "started": (first or {}).get("time"),
            "ended": end.get("time") if end else None,
            "updated": self.mtime,
            "error": (end or {}).get("error") if state in ("failed", "stopped") else None,
            "family": (start or {}).get("family"),
            "bad_lines": self.bad_lines,
        }


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan

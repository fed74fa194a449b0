"""The served folder: finding runs in it and resolving URL paths without leaving it.

A run is any folder holding a ``train_log.jsonl``: the served folder itself
(an ``output_dir``) or folders below it. Nothing outside the folder is ever
read: every path a URL names is resolved (symlinks followed) and refused unless
it still lies inside the folder, so ``../`` and a link planted in a run folder
pointing at ``/etc`` both answer 404.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from tuner.outputs import LOG_NAME
from tuner.serve.runlog import RunLog

__all__ = ["RunFolder", "MAX_DEPTH"]

MAX_DEPTH = 4  # FOLDER/group/sub/run is as deep as anyone files runs; deeper is a dataset, not runs
_MAX_DIRS = 200_000  # stop walking a folder that is a whole disk
_RESCAN_SECONDS = 2.0  # the run list is walked at most this often (less for huge folders), however many pages poll
_SKIP = {"node_modules", "__pycache__", ".git"}


class RunFolder:
    """The served folder, its runs (found by a bounded walk, cached briefly) and their logs (read incrementally)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._lock = threading.Lock()
        self._runs: list[str] = []
        self._scanned = 0.0
        self._rescan_after = _RESCAN_SECONDS
        self._logs: dict[str, RunLog] = {}

    # -- paths -----------------------------------------------------------------

    def resolve(self, rel: str) -> Path | None:
        """The path ``rel`` names under the folder, symlinks followed; None when it would leave the folder."""
        if "\x00" in rel or rel.startswith(("/", "\\")):
            return None
        parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")]
        if ".." in parts:
            return None
        try:
            path = self.root.joinpath(*parts).resolve()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a name the OS refuses
            return None
        return path if path == self.root or self.root in path.parents else None

    def rel(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()  # "." for the folder itself

    # -- runs ------------------------------------------------------------------

    def run_ids(self) -> list[str]:
        """Every run's path relative to the folder ("." for the folder itself), newest log first."""
        with self._lock:
            if time.monotonic() - self._scanned > self._rescan_after:
                began = time.monotonic()
                self._runs = self._scan()
                self._scanned = time.monotonic()
                # A huge folder is walked less often: never more than a tenth of the time goes to walking.
                self._rescan_after = max(_RESCAN_SECONDS, 10 * (self._scanned - began))
                for gone in set(self._logs) - set(self._runs):
                    del self._logs[gone]
            return list(self._runs)

    def _scan(self) -> list[str]:
        found: list[tuple[float, str]] = []
        stack: list[tuple[Path, int]] = [(self.root, 0)]
        visited = 0
        while stack and visited < _MAX_DIRS:
            folder, depth = stack.pop()
            visited += 1
            try:
                entries = list(os.scandir(folder))
            except OSError:  # deleted or unreadable while walking: not a run
                continue
            log = next((e for e in entries if e.name == LOG_NAME), None)
            if log is not None and self._entry_inside(log):
                try:
                    found.append((log.stat().st_mtime, folder.relative_to(self.root).as_posix()))  # lexical: no resolve
                except OSError:
                    pass
                continue  # a run's checkpoints and media hold no runs
            if depth >= MAX_DEPTH:
                continue
            for entry in entries:
                if entry.name.startswith(".") or entry.name in _SKIP:
                    continue
                try:
                    if entry.is_dir() and self._entry_inside(entry):
                        stack.append((Path(entry.path), depth + 1))
                except OSError:
                    continue
        found.sort(key=lambda item: (-item[0], item[1]))
        return [rel for _, rel in found]

    def _entry_inside(self, entry: os.DirEntry[str]) -> bool:
        """An entry of a folder known to be inside is inside too, unless it is a link: only links are resolved."""
        return not entry.is_symlink() or self._inside(Path(entry.path))

    def _inside(self, path: Path) -> bool:
        try:
            real = path.resolve()
        except (OSError, RuntimeError):
            return False
        return real == self.root or self.root in real.parents

    def log(self, run_id: str) -> RunLog | None:
        """The run's log, refreshed; None when there is no such run (or it was deleted)."""
        folder = self.resolve(run_id)
        if folder is None:
            return None
        path = folder / LOG_NAME
        if not self._inside(path):
            return None
        with self._lock:
            log = self._logs.get(run_id)
            if log is None:
                log = self._logs[run_id] = RunLog(path)
        with log.lock:  # one log at a time; a long first read of one run holds up no other run's page
            try:
                log.refresh()
            except OSError:  # the run was deleted (or its log moved) while shown
                with self._lock:
                    self._logs.pop(run_id, None)
                return None
        return log

"""Durable writes: flushing files and folders to disk, and saying so in one line when the disk is full.

A file renamed into place is only safe after a power cut if its bytes reached the
disk before the rename, and the rename itself only once its folder was flushed:
``fsync`` the file, rename, ``fsync`` the folder. Checkpoints and cache entries
both follow that order.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

__all__ = ["fsync_file", "fsync_dir", "is_disk_full", "disk_full_message", "human_size"]

_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def fsync_file(path: Path) -> None:
    """Flush ``path``'s bytes to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush ``path``'s entries (names created or renamed in it) to the disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows cannot open a folder; its renames are durable once they return
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; nothing more can be done there
    finally:
        os.close(fd)


def is_disk_full(exc: BaseException) -> bool:
    """The error is "no space left on device" (or over the disk quota)."""
    return isinstance(exc, OSError) and exc.errno in _FULL


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover - the loop returns


def disk_full_message(what: str, folder: Path, needed: int, option: str) -> str:
    """One line: what could not be written, where, how much it needs, how much is free, which option moves it."""
    return (
        f"disk full: writing {what} into {folder} needs about {human_size(needed)} and {_free_space(folder)};"
        f" free some space there or point {option} at another disk"
    )


def disk_full_line(exc: OSError) -> str:
    """One line for a full disk met by a write that does not name its own option (reports, media, cards)."""
    if not exc.filename:
        return "disk full: no space left on device; free some space, or point output_dir / cache_dir at another disk"
    target = Path(exc.filename)
    return (
        f"disk full: writing {target.name} into {target.parent}: {_free_space(target.parent)};"
        " free some space there, or point the option that names that folder at another disk"
    )


def _free_space(folder: Path) -> str:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return f"{human_size(shutil.disk_usage(probe).free)} is free"
    except OSError:
        return "the free space is unknown"

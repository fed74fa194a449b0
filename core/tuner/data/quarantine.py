"""Moving unreadable files out of a dataset (``delete_problematic_images``), never deleting them.

A broken file is moved, with its caption file, to the same relative path under
``<instance_data_dir>/.tuner-quarantine/``, and a line is appended to
``.tuner-quarantine/quarantine.jsonl`` saying what moved where and why. The scan
skips hidden folders, so quarantined files are not seen again; move a repaired
file back to use it.

The dataset is the user's, and anyone who could put a file in it could put a link:
nothing here follows one. A file reached through a symlinked folder that leads
outside the dataset folder is never moved; a link where the quarantine folder, one
of its sub-folders or its log should be stops the run with one line instead of
moving files to, or appending to, whatever the link points at.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import time
from pathlib import Path

from tuner.errors import DataError, printable

__all__ = ["quarantine_file", "QUARANTINE_DIR", "QUARANTINE_LOG"]

QUARANTINE_DIR = ".tuner-quarantine"
QUARANTINE_LOG = "quarantine.jsonl"


def _refuse(path: Path, what: str) -> DataError:
    target = ""
    try:
        target = f" (to {printable(os.readlink(path))})"
    except OSError:
        pass
    return DataError(
        f"{printable(str(path))} is {what}{target}, where tuner's quarantine keeps its files: tuner never writes"
        " through a link found in a dataset; remove it, or set delete_problematic_images = false"
    )


def _own_folder(root: Path, parts: tuple[str, ...]) -> Path:
    """``root/parts...``, each folder created if missing; a link or a file among them is refused."""
    folder = root
    for part in parts:
        folder = folder / part
        try:
            mode = os.lstat(folder).st_mode  # lstat: the link itself, not where it leads
        except FileNotFoundError:
            os.mkdir(folder)  # fails, rather than follows, if a link appears at this name meanwhile
            continue
        if stat.S_ISLNK(mode):
            raise _refuse(folder, "a symbolic link")
        if not stat.S_ISDIR(mode):
            raise _refuse(folder, "not a folder")
    return folder


def _free(path: Path) -> Path:
    candidate, n = path, 1
    while os.path.lexists(candidate):  # a dangling link counts as taken
        candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
        n += 1
    return candidate


def _move(src: Path, dest: Path) -> None:
    try:
        os.replace(src, dest)  # same file system: an atomic rename (of a link itself, never its target)
    except OSError:
        shutil.move(str(src), str(dest))


def _append_record(log: Path, record: dict[str, object]) -> None:
    """Append one JSON line to ``log`` without following a link at its name; a full disk leaves no half line."""
    from tuner.durable import append_whole

    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(log, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(log, "a symbolic link") from None
        raise
    with os.fdopen(fd, "ab", buffering=0) as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or a device planted at the log's name
            raise _refuse(log, "not a regular file")
        # JSON escapes control characters: a crafted file name cannot start a line of its own.
        append_whole(f, (json.dumps(record) + "\n").encode("utf-8"))


def quarantine_file(root: Path, file: Path, reason: str) -> Path | None:
    """Move ``file`` (and its ``.txt`` caption) into ``root``'s quarantine folder; return where it went.

    A file whose folder lies outside ``root`` (reached through a symlinked folder)
    is left where it is, with a notice, and ``None`` is returned: the run never
    moves files it was not given.

    :raises DataError: a link (or a file) stands where the quarantine folder, one of its
        sub-folders or its log should be.
    """
    if not file.parent.resolve().is_relative_to(root.resolve()):
        from tuner.progress import notice

        notice(
            f"{file} is not quarantined: its folder lies outside {root} (reached through a symlink), and files"
            " outside the dataset folder are never moved; it is skipped"
        )
        return None
    relative = file.relative_to(root)
    base = _own_folder(root, (QUARANTINE_DIR,))
    dest = _free(_own_folder(base, relative.parent.parts) / relative.name)
    _move(file, dest)
    moved = [str(dest.relative_to(root))]
    caption = file.with_suffix(".txt")
    if caption.is_file():
        caption_dest = _free(dest.with_suffix(".txt"))
        _move(caption, caption_dest)
        moved.append(str(caption_dest.relative_to(root)))
    record = {"file": str(relative), "moved_to": moved, "reason": reason, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _append_record(base / QUARANTINE_LOG, record)
    return dest

"""Durable writes: flushing files and folders to disk, and saying so in one line when the disk is full.

A file renamed into place is only safe after a power cut if its bytes reached the
disk before the rename, and the rename itself only once its folder was flushed:
``fsync`` the file, rename, ``fsync`` the folder. Checkpoints and cache entries
both follow that order.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "fsync_file",
    "fsync_dir",
    "is_disk_full",
    "full_disk_error",
    "disk_full_message",
    "disk_full_line",
    "human_size",
    "replacing",
    "append_whole",
    "process_alive",
    "refused_write_line",
]

# No space, over the quota, or over a file-size limit (``ulimit -f``: CPython ignores SIGXFSZ, so the write
# fails with EFBIG): each leaves the file cut short, and each is the same one line to the user.
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
# safetensors (Rust) reports a failed write as its own SafetensorError whose text ends "(os error 28)".
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


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


def full_disk_error(exc: BaseException | None) -> OSError | None:
    """The full-disk `OSError` behind ``exc``, or ``None``.

    ``exc`` itself, or what it was raised from (``raise ... from exc``), is an ``OSError``
    with ENOSPC, EDQUOT or EFBIG, or a writer's own error type whose text carries that
    errno (safetensors' ``SafetensorError``: "I/O error: No space left on device (os error 28)").
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            if exc.errno in _FULL:
                return exc
        else:
            match = _RUST_OS_ERROR.search(str(exc))
            if match and int(match.group(1)) in _FULL:
                code = int(match.group(1))
                return OSError(code, os.strerror(code))
        exc = exc.__cause__
    return None


def process_alive(pid: int) -> bool:
    """A process with this id runs (perhaps another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_REFUSED = {errno.EROFS, errno.EACCES, errno.EPERM}


def refused_write_line(exc: BaseException | None) -> str | None:
    """One line for a file the system refused (a folder made read-only or unwritable mid-run), or ``None``.

    Only an `OSError` that names its file (``exc`` or what it was raised from) qualifies.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _REFUSED and exc.filename:
            return (
                f"{exc.filename}: {exc.strerror}: tuner cannot write there (was the folder made read-only or"
                " unwritable?); make it writable again, then resume from the last checkpoint"
                " (resume_from_checkpoint = 'latest')"
            )
        exc = exc.__cause__ or exc.__context__
    return None


def is_disk_full(exc: BaseException) -> bool:
    """The error is "no space left on device", over the disk quota or over the file-size limit."""
    return full_disk_error(exc) is not None


@contextlib.contextmanager
def replacing(path: Path, tmp: Path | None = None) -> Iterator[Path]:
    """Write ``path`` whole or not at all: yield a temporary name beside it, renamed over ``path`` when the
    block ends; removed when it fails (a full disk, a crash of the writer), so no partial file stays behind.
    """
    fresh = tmp is None
    if tmp is None:
        # Created afresh (O_EXCL, a random name ending in this process's id): nothing a crash or anyone
        # else left beside ``path`` (a .partial file, folder or link of the same process id, which a
        # container reuses) is written through or stands in the way.
        # Mode 0o666 less the umask, as a plain open would give (mkstemp's 0o600 would hide a config).
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.{os.getpid()}.partial")
        with contextlib.suppress(FileNotFoundError):  # no folder: the writer says so itself
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fresh:
        _remove_dead_partials(path)


def _remove_dead_partials(path: Path) -> None:
    """Remove the temporary files of ``path`` whose writers died (their process id ends the name)."""
    for left in path.parent.glob(f".{path.name}.*.partial"):
        try:
            pid = int(left.name.rsplit(".", 2)[-2])
        except ValueError:
            pid = -1
        if pid == os.getpid() or pid <= 0 or not process_alive(pid):
            if left.is_dir() and not left.is_symlink():
                shutil.rmtree(left, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    left.unlink()


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover - the loop returns


def append_whole(file: BinaryIO, data: bytes) -> None:
    """Append ``data`` to ``file`` (opened ``"ab"``, unbuffered); a write that fails part-way (a full disk)
    is cut back off, so a log of lines never ends in half a line."""
    start = os.fstat(file.fileno()).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[file.write(view) or 0 :]
    except BaseException:
        with contextlib.suppress(OSError):
            os.ftruncate(file.fileno(), start)
        raise


def disk_full_message(what: str, folder: Path, needed: int, option: str, cause: BaseException | None = None) -> str:
    """One line: what could not be written, where, how much it needs, how much is free, which option moves it.

    :param cause: the error met; a file-size limit (EFBIG) is named as such, since free space does not help.
    """
    cause = full_disk_error(cause)
    limit = (
        " (the write went over this process's file-size limit, ulimit -f: raise it)"
        if cause is not None and cause.errno == errno.EFBIG
        else ""
    )
    return (
        f"disk full: writing {what} into {folder} needs about {human_size(needed)} and {_free_space(folder)}{limit};"
        f" free some space there or point {option} at another disk"
    )


def disk_full_line(exc: BaseException) -> str:
    """One line for a full disk met by a write that does not name its own option (reports, media, cards)."""
    exc = full_disk_error(exc) or exc
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        where = f" {Path(exc.filename).name} in {Path(exc.filename).parent}" if exc.filename else ""
        return (
            f"disk full: writing{where} went over the file-size limit of this process (ulimit -f):"
            " raise the limit, or point output_dir / cache_dir at a file system without one"
        )
    if not isinstance(exc, OSError) or not exc.filename:
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

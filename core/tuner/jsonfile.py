"""Reading the text files a user writes: the config, the backend file, prompt library, webhooks, LyCORIS.

Every one is read alike: UTF-8, with or without a byte-order mark (editors on
Windows write one); anything else is one line saying where the first bad byte is.
Only regular files are read, and only up to a size such a file can have: a FIFO,
a device or a runaway file would otherwise be read forever. A JSON object naming
one key twice is refused (Python's parser silently keeps the last value).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

__all__ = ["MAX_TEXT_BYTES", "decode_text", "read_regular", "regular_file_problem", "loads", "read_json"]

# The largest config, backend, caption or metadata file read (a JSON-lines caption file of
# 100,000 clips is ~20 MB); larger is not a text file a person wrote.
MAX_TEXT_BYTES = 64 * 1024 * 1024


def decode_text(raw: bytes, path: str | Path, *, error: type[Exception] = ValueError) -> str:
    """``raw`` as UTF-8 text (a BOM dropped); raise ``error`` naming ``path`` when it is not UTF-8."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise error(f"{path} is UTF-16 text: save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise error(
            f"{path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}): save it as UTF-8"
        ) from None


def regular_file_problem(path: Path, *, limit: int = MAX_TEXT_BYTES, follow: bool = True) -> tuple[str, bytes | None]:
    """``("", bytes)`` of a regular file of at most ``limit`` bytes, or why it cannot be read and ``None``.

    :param follow: follow a symlink at ``path`` itself (``False``: a link is refused).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | (0 if follow else getattr(os, "O_NOFOLLOW", 0))
    try:
        # Opened without blocking, then checked on the open file: a FIFO swapped in after a
        # check would otherwise block the open, and a device would be read forever.
        fd = os.open(path, flags)
    except FileNotFoundError:
        return f"no such file {path}", None
    except OSError as exc:  # unreadable, a link refused (ELOOP), a name the file system refuses
        if not follow and os.path.islink(path):
            return f"{path} is a symbolic link, which is not followed here", None
        return f"cannot read {path}: {exc.strerror or exc}", None
    except ValueError as exc:  # a NUL in the path
        return f"the path {ascii(str(path))} is not a usable file name ({exc})", None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            return f"{path} is a folder, not a file", None
        if not stat.S_ISREG(info.st_mode):
            return f"{path} is not a regular file (a pipe, a socket or a device is never read)", None
        try:
            raw = f.read(limit + 1)
        except OSError as exc:
            return f"cannot read {path}: {exc.strerror or exc}", None
    if len(raw) > limit:
        return f"{path} is larger than {limit // 1024} KiB, more than such a file holds", None
    return "", raw


def read_regular(path: Path, *, limit: int = MAX_TEXT_BYTES, error: type[Exception] = ValueError, what: str = "") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; anything else raises ``error`` in one line."""
    problem, raw = regular_file_problem(Path(path), limit=limit)
    if raw is None:
        raise error(f"{what}: {problem}" if what else problem)
    return raw


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice in one object (which one is meant?)")
        out[key] = value
    return out


def loads(text: str) -> Any:
    """``json.loads`` refusing an object with a key twice (`ValueError`); too deep a nesting is `RecursionError`."""
    return json.loads(text, object_pairs_hook=_no_duplicates)


def read_json(path: Path, *, what: str = "", error: type[Exception] = ValueError, limit: int = MAX_TEXT_BYTES) -> Any:
    """The parsed contents of ``path``; a missing file or bad JSON raises ``error`` with one readable line.

    :param what: how messages name the file's option (``"data_backend_config"``), put before the path.
    :param error: the exception to raise: `ValueError` inside pydantic validators, a `TunerError` elsewhere.
    """
    name = f"{what} {path}".strip()
    raw = read_regular(Path(path), limit=limit, error=error, what=what)
    text = decode_text(raw, name, error=error)
    try:
        return loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{name}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise error(f"{name}: nested too deeply") from None
    except ValueError as exc:  # a key twice
        raise error(f"{name}: {exc}") from None

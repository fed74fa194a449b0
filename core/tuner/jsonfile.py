"""Reading the text files a user writes: the config, the backend file, prompt library, webhooks, LyCORIS.

Every one is read alike: UTF-8, with or without a byte-order mark (editors on
Windows write one); anything else is one line saying where the first bad byte is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["decode_text", "read_json"]


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


def _read_regular_file(path: Path) -> tuple[str, bytes | None]:
    """``("", bytes)``, or why the file cannot be read and ``None``."""
    try:
        # Only regular files: a device or a pipe (/dev/zero) would be read forever.
        if not path.is_file():
            if not path.exists():
                return f"no such file {path}", None
            return f"{path} {'is a folder' if path.is_dir() else 'is not a regular file'}, not a JSON file", None
        return "", path.read_bytes()
    except OSError as exc:  # unreadable, or a name the file system refuses
        return f"cannot read {path}: {exc.strerror or exc}", None
    except ValueError as exc:  # a NUL in the path
        return f"the path {ascii(str(path))} is not a usable file name ({exc})", None


def read_json(path: Path, *, what: str = "", error: type[Exception] = ValueError) -> Any:
    """The parsed contents of ``path``; a missing file or bad JSON raises ``error`` with one readable line.

    :param what: how messages name the file's option (``"data_backend_config"``), put before the path.
    :param error: the exception to raise: `ValueError` inside pydantic validators, a `TunerError` elsewhere.
    """
    name = f"{what} {path}".strip()
    prefix = f"{what}: " if what else ""
    problem, raw = _read_regular_file(Path(path))
    if raw is None:
        raise error(f"{prefix}{problem}")
    text = decode_text(raw, name, error=error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{name}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise error(f"{name}: nested too deeply") from None

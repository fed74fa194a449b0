"""Reading the JSON files a config points at (backend file, prompt library, webhooks, LyCORIS)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["read_json"]


def read_json(path: Path, *, what: str = "", error: type[Exception] = ValueError) -> Any:
    """The parsed contents of ``path``; a missing file or bad JSON raises ``error`` with one readable line.

    :param what: how messages name the file's option (``"data_backend_config"``), put before the path.
    :param error: the exception to raise: `ValueError` inside pydantic validators, a `TunerError` elsewhere.
    """
    name = f"{what} {path}".strip()
    if not Path(path).is_file():
        raise error(f"{what + ': ' if what else ''}no such file {path}")
    try:
        # utf-8-sig: editors on Windows save JSON with a byte-order mark.
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise error(f"{name}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None

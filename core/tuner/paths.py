"""Checks on the paths a config names, made before anything slow starts.

Text no file system accepts (a NUL, a lone surrogate, a name over 255 bytes),
an output folder that is a file or cannot be written, and a local model folder
that is missing or lacks a part: each is one line naming the option, said before
any model loads, instead of an ``OSError`` from deep inside a library (or five
retries against the Hub for a path that was never a Hub id).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path

from tuner.errors import ConfigError

__all__ = [
    "NAME_MAX",
    "PATH_MAX",
    "text_problem",
    "check_path_text",
    "check_output_dir",
    "looks_local",
    "check_model_parts",
]

# The limits common to Linux, macOS and Windows file systems: bytes per name, bytes per path.
NAME_MAX = 255
PATH_MAX = 4096
_WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf")


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be written to a file or a file name, or ``None`` when it can."""
    if "\x00" in value:
        return "contains a NUL character (\\x00)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start]
        return (
            f"contains a character that is not valid Unicode ({ascii(bad)}, a lone surrogate: often the trace of a"
            " file name that is not UTF-8)"
        )
    return None


def check_path_text(option: str, value: str | os.PathLike[str], error: type[Exception] = ConfigError) -> None:
    """Refuse a path no file system accepts, naming ``option``; raise ``error``."""
    text = os.fspath(value)
    problem = text_problem(text)
    if problem is None:
        longest = max(text.replace("\\", "/").split("/"), key=lambda part: len(part.encode()))
        if len(longest.encode()) > NAME_MAX:
            size = len(longest.encode())
            problem = f"has a name of {size} bytes ('{longest[:24]}...'); file systems allow {NAME_MAX}"
        elif len(text.encode()) > PATH_MAX:
            problem = f"is {len(text.encode())} bytes long; file systems allow {PATH_MAX}"
    if problem is not None:
        shown = ascii(text[:60] + ("..." if len(text) > 60 else ""))
        raise error(f"{option}: the path {shown} {problem}: fix the path")


def check_output_dir(option: str, path: Path) -> None:
    """Create the output folder ``path`` if needed and prove it writable; one line naming ``option`` if not."""
    check_path_text(option, path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option}: {path} is a file, not a folder: name a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        # Permission bits do not tell the whole story (root, read-only mounts): try a file.
        probe = path / f".tuner-write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except FileExistsError:
        raise ConfigError(f"{option}: a file is in the way of the folder {path}: move it or pick another") from None
    except OSError as exc:
        raise ConfigError(
            f"{option}: cannot write to {path} ({exc.strerror or exc}): pick a folder you can write to"
        ) from None


def looks_local(value: str) -> bool:
    """Whether a model source is meant as a path rather than a Hub id (``org/name``).

    A Hub id has at most two parts and never starts with ``/``, ``./``, ``../`` or ``~``;
    anything else, and a single weights file, is a path.
    """
    if value.startswith(("/", "./", "../", "~", ".\\", "..\\")) or value in (".", ".."):
        return True
    if os.path.isabs(value) or value.endswith(_WEIGHT_SUFFIXES):
        return True
    parts = [p for p in value.replace("\\", "/").split("/") if p]
    return len(parts) > 2


def check_model_parts(parts: Iterable[tuple[str, str, str]], *, layout: str = "") -> None:
    """Check the local folders a model loads from, before any library is asked.

    :param parts: ``(option, source, subfolder)`` per component: the option that named the source,
        the resolved source (a path or a Hub id) and the component's subfolder in it (``"vae"``;
        ``""`` for the source's root or a single weights file).
    :param layout: what a complete folder holds, said when a part is missing
        (``"transformer/, vae/, text_encoder/, tokenizer/ and scheduler/"``).

    A source that looks like a path (`looks_local`) must exist, as a folder holding each of its parts
    (or, for a single weights file, as that file); a Hub id is left to the library.
    """
    for option, source, subfolder in parts:
        check_path_text(option, source)
        path = Path(source).expanduser()
        if not path.exists():
            if not looks_local(source):
                continue  # a Hub id: the library downloads it (or says it cannot)
            kind = "file" if path.suffix in _WEIGHT_SUFFIXES else "folder"
            raise ConfigError(
                f"{option}: no such {kind} {source} (the path looks local, so the Hub is not asked): check the path"
            )
        if path.is_file():
            if subfolder and not source.endswith(".safetensors"):
                raise ConfigError(f"{option}: {path} is a file; name the model's folder")
            continue
        if subfolder and not (path / subfolder).is_dir():
            holds = f" (a complete model folder holds {layout})" if layout else ""
            raise ConfigError(f"{option}: the model folder {path} has no {subfolder}/ folder{holds}")

"""Resumable checkpoints: written atomically, checked before use, found by step, rotated.

A checkpoint is built in a hidden ``.checkpoint-N.partial`` folder: the training
state (safetensors + JSON, see `tuner.train.statefile`), the adapter file(s),
``state.json``, and last ``manifest.json`` with the size and SHA-256 of every
other file. Every file and the folder are flushed to disk before the folder is
renamed to ``checkpoint-N``, so a crash never leaves a folder that looks like a
checkpoint, and a checkpoint damaged later (a truncated copy, a full disk
elsewhere) is told apart from an intact one by its manifest.

Re-saving a step that exists moves the old folder aside to ``.checkpoint-N.old``
only once the new one is complete, renames the new one in, then deletes the old
one. A crash between those two renames leaves ``.checkpoint-N.old`` alone, and
`clean_partials` puts it back at the next start: the good copy is never lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from tuner.durable import disk_full_message, fsync_dir, fsync_file, is_disk_full
from tuner.errors import CheckpointError
from tuner.jsonfile import loads, regular_file_problem
from tuner.train.statefile import STATE_STRUCTURE, STATE_TENSORS, read_state, state_nbytes, write_state

__all__ = [
    "ADAPTER_FILE",
    "MANIFEST",
    "list_checkpoints",
    "checkpoint_step",
    "remove_checkpoint",
    "checkpoint_problem",
    "latest_checkpoint",
    "holds_checkpoints",
    "write_checkpoint",
    "read_checkpoint",
    "rotate_checkpoints",
    "clean_partials",
]

ADAPTER_FILE = "pytorch_lora_weights.safetensors"
MANIFEST = "manifest.json"
_STATE_JSON = "state.json"
_PICKLE = "training_state.pt"  # the format of earlier versions: never unpickled
# Only the names tuner writes: ASCII digits without a leading zero (int() also reads '١٠' and '007').
_NAME = re.compile(r"checkpoint-(0|[1-9][0-9]{0,14})", re.ASCII)
_ASIDE = re.compile(r"\.checkpoint-(0|[1-9][0-9]{0,14})\.old", re.ASCII)
MAX_STEP = 10**15  # more steps than any run takes; beyond it a "step" is damage, not progress
_MANIFEST_BYTES = 16 * 1024 * 1024
_REQUIRED = (_STATE_JSON, STATE_TENSORS, STATE_STRUCTURE)


def checkpoint_step(name: str) -> int | None:
    """N for a folder named ``checkpoint-N`` as tuner names it, else ``None``."""
    match = _NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: Path, *, links: bool = False) -> list[tuple[int, Path]]:
    """Every ``checkpoint-N`` folder in ``output_dir``, oldest first (intact or not: see `checkpoint_problem`).

    :param links: also list symbolic links with such a name (to delete them); they are never read.
    """
    if not output_dir.is_dir():
        return []
    found = []
    for child in output_dir.iterdir():
        step = checkpoint_step(child.name)
        if step is not None and (_real_dir(child) or (links and child.is_symlink())):
            found.append((step, child))
    return sorted(found)


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint folder; a symbolic link is removed itself, never what it points at."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path)


def holds_checkpoints(output_dir: Path) -> bool:
    """``output_dir`` holds a checkpoint of some run (or one set aside by an interrupted re-save)."""
    if not output_dir.is_dir():
        return False
    return bool(list_checkpoints(output_dir, links=True)) or any(_ASIDE.fullmatch(c.name) for c in output_dir.iterdir())


def _open_regular(path: Path) -> int:
    """A descriptor of the regular file ``path``, never through a link and never blocking on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NOCTTY", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path.name} is not a regular file")
    return fd


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with os.fdopen(_open_regular(path), "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _entry_problem(folder: Path, name: Any, entry: Any) -> str | None:
    """Why one manifest entry is unusable: a name outside the folder, a link, not a regular file, odd fields."""
    if not isinstance(name, str) or not isinstance(entry, dict):
        return f"{MANIFEST} has an entry that is not a file name with its size and checksum"
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
        return f"{MANIFEST} names {name!r}, which is not a file inside the checkpoint"
    size, digest = entry.get("size"), entry.get("sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(digest, str):
        return f"{MANIFEST} gives {name!r} no valid size and checksum"
    where = folder
    for i, part in enumerate(parts):
        where = where / part
        try:
            mode = where.lstat().st_mode
        except OSError:
            return f"{name} is missing"
        last = i == len(parts) - 1
        if stat.S_ISLNK(mode):
            return f"{name} goes through a symbolic link, which is never followed out of a checkpoint"
        if (last and not stat.S_ISREG(mode)) or (not last and not stat.S_ISDIR(mode)):
            return f"{name} is not a regular file (a pipe, a device or a folder is never read)"
    return None


def _read_manifest(path: Path) -> tuple[str | None, dict[str, Any]]:
    problem, raw = regular_file_problem(path / MANIFEST, limit=_MANIFEST_BYTES, follow=False)
    if raw is None:
        if problem.startswith("no such file"):
            return f"{MANIFEST} is missing (it is written last: the write did not finish or files were removed)", {}
        return f"{MANIFEST} is unreadable ({problem})", {}
    try:
        files = loads(raw.decode("utf-8"))["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("no files listed")
    except RecursionError:
        return f"{MANIFEST} is unreadable (nested too deeply)", {}
    except (ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST} is unreadable ({exc})", {}
    return None, files


def _int_fact(info: dict[str, Any], key: str, low: int, default: int | None = None) -> int:
    value = info.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value < MAX_STEP:
        raise ValueError(f"{key} is {str(value)[:40]!r}, not a whole number from {low} to {MAX_STEP}")
    return value


def _read_info(path: Path) -> dict[str, Any]:
    """``state.json``, checked: a whole step in range, counts that are counts; `ValueError` says what is wrong."""
    fd = _open_regular(path / _STATE_JSON)
    with os.fdopen(fd, "rb") as f:
        raw = f.read(_MANIFEST_BYTES + 1)
    if len(raw) > _MANIFEST_BYTES:
        raise ValueError("it is far larger than a state.json")
    try:
        info = loads(raw.decode("utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(info, dict):
        raise ValueError("it is not an object")
    _int_fact(info, "step", 0)
    _int_fact(info, "num_processes", 1, 1)
    if "micro_batches" in info:
        _int_fact(info, "micro_batches", 0)
    if not isinstance(info.get("identity", {}), dict):
        raise ValueError("identity is not an object")
    return info


def checkpoint_problem(path: Path, *, checksums: bool = True) -> str | None:
    """Why the checkpoint at ``path`` cannot be used, or ``None`` when it is intact.

    Only regular files inside the folder that its manifest lists are read: a name
    leading out, a symbolic link, a FIFO or a device is a problem, never read. A
    folder named ``checkpoint-N`` must record step N.

    :param checksums: also compare every file's SHA-256 (reads everything); without, sizes only.
    """
    if not path.is_dir():
        return "no such folder"
    if (path / _PICKLE).exists() and not (path / MANIFEST).exists():
        return (
            f"it holds {_PICKLE}, a pickle from an earlier tuner version, which is never loaded because unpickling"
            " can run code"
        )
    problem, files = _read_manifest(path)
    if problem is not None:
        return problem
    for name, entry in files.items():
        if (problem := _entry_problem(path, name, entry)) is not None:
            return problem
    missing = [name for name in _REQUIRED if name not in files]
    if missing:
        return f"{MANIFEST} does not list {', '.join(missing)}"
    for name, entry in files.items():
        size = (path / name).lstat().st_size
        if size != entry["size"]:
            return f"{name} is {size} bytes, expected {entry['size']}"
    try:
        info = _read_info(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"{_STATE_JSON} is unreadable ({exc})"
    named = checkpoint_step(path.name)
    if named is not None and info["step"] != named:
        return f"{_STATE_JSON} records step {info['step']}, not {named} (a renamed or copied folder)"
    if checksums:
        for name, entry in files.items():
            try:
                if _sha256(path / name) != entry["sha256"]:
                    return f"{name} does not match its checksum"
            except OSError as exc:
                return f"{name} cannot be read ({exc.strerror or exc})"
    return None


def latest_checkpoint(output_dir: Path, on_skip: Callable[[Path, str], None] | None = None) -> Path | None:
    """The newest intact checkpoint; each newer damaged one goes to ``on_skip(path, problem)``."""
    for _, path in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        if on_skip is not None:
            on_skip(path, problem)
    return None


def clean_partials(output_dir: Path) -> list[Path]:
    """Undo what a crash interrupted; return the checkpoints put back.

    A checkpoint set aside for a re-save whose new copy never arrived goes back to
    ``checkpoint-N``; every other leftover (``.checkpoint-N.partial``, a stale
    ``.checkpoint-N.old``) is deleted.
    """
    restored: list[Path] = []
    if not output_dir.is_dir():
        return restored
    for child in sorted(output_dir.iterdir()):
        match = _ASIDE.fullmatch(child.name)
        if not match:
            continue
        final = output_dir / f"checkpoint-{match.group(1)}"
        if not final.exists():
            os.replace(child, final)
            restored.append(final)
        else:
            shutil.rmtree(child, ignore_errors=True)
    for child in output_dir.glob(".checkpoint-*.partial"):
        shutil.rmtree(child, ignore_errors=True)
    if restored:
        fsync_dir(output_dir)
    return restored


def _write_manifest(folder: Path) -> None:
    """Flush every file, then record its size and checksum in ``manifest.json`` (flushed too)."""
    files = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        fsync_file(file)
        files[file.relative_to(folder).as_posix()] = {"size": file.stat().st_size, "sha256": _sha256(file)}
    with (folder / MANIFEST).open("w", encoding="utf-8") as f:
        json.dump({"files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    for sub in {p.parent for p in folder.rglob("*") if p.is_file()}:
        fsync_dir(sub)


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def write_checkpoint(
    output_dir: Path,
    step: int,
    training_state: dict[str, Any],
    write_adapters: Callable[[Path], Any],
    info: dict[str, Any],
) -> Path:
    """Write ``checkpoint-<step>`` atomically and return its path.

    :param training_state: trainable tensors, optimizer state, RNG states (tensors, numbers, strings).
    :param write_adapters: ``callable(folder)`` exporting the loadable adapter file(s) into the checkpoint.
    :param info: JSON-able facts (step, seed, ...), written as ``state.json``.
    :raises CheckpointError: the disk is full (the partial folder is removed; older checkpoints are intact).
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"checkpoint-{step}"
    partial = output_dir / f".checkpoint-{step}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir()
        write_state(partial, training_state)
        write_adapters(partial)
        (partial / _STATE_JSON).write_text(json.dumps({"step": step, **info}, indent=2), encoding="utf-8")
        _write_manifest(partial)
        fsync_dir(partial)
    except Exception as exc:
        # A full disk comes as OSError, as safetensors' own SafetensorError, or as the CheckpointError the
        # adapter export raises from either: say it once here, with nothing half-written left behind.
        if not is_disk_full(exc):
            raise
        written = _folder_bytes(partial)
        shutil.rmtree(partial, ignore_errors=True)
        newest = list_checkpoints(output_dir)
        needed = max(_folder_bytes(newest[-1][1]) if newest else 0, state_nbytes(training_state) * 2, written)
        message = disk_full_message(f"checkpoint-{step}", output_dir, needed, "output_dir", exc)
        raise CheckpointError(message + "; the last checkpoint is intact") from None
    if final.exists():
        # The good copy stays whole until the new one is complete; a crash here is undone by clean_partials.
        aside = output_dir / f".checkpoint-{step}.old"
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
        os.replace(partial, final)
        fsync_dir(output_dir)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(partial, final)
        fsync_dir(output_dir)
    return final


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(training_state, info)`` of an intact checkpoint folder; a damaged one is a one-line `CheckpointError`."""
    problem = checkpoint_problem(path)
    if problem is not None:
        raise CheckpointError(
            f"checkpoint {path} cannot be used: {problem}. Resume from another checkpoint"
            " (resume_from_checkpoint = 'latest' skips damaged ones) or start afresh"
        )
    try:
        info = _read_info(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: {_STATE_JSON} is unreadable ({exc})") from None
    return read_state(path), info


def rotate_checkpoints(output_dir: Path, limit: int | None, keep: Path | None = None) -> list[Path]:
    """Delete the oldest intact checkpoints beyond ``limit``; return what was deleted.

    Damaged checkpoints are neither counted nor deleted (they were reported; a later
    save of their step replaces them), and ``keep`` (the one just written) never goes.
    """
    if limit is None:
        return []
    intact = [path for _, path in list_checkpoints(output_dir) if checkpoint_problem(path, checksums=False) is None]
    doomed = [path for path in intact[: max(0, len(intact) - limit)] if path != keep]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuner.durable import disk_full_message, fsync_dir, fsync_file, is_disk_full
from tuner.errors import CheckpointError
from tuner.train.statefile import read_state, state_nbytes, write_state

__all__ = [
    "ADAPTER_FILE",
    "MANIFEST",
    "list_checkpoints",
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
_NAME = re.compile(r"^checkpoint-(\d+)$")
_ASIDE = re.compile(r"^\.checkpoint-(\d+)\.old$")


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Every ``checkpoint-N`` folder in ``output_dir``, oldest first (intact or not: see `checkpoint_problem`)."""
    if not output_dir.is_dir():
        return []
    found = []
    for child in output_dir.iterdir():
        match = _NAME.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def holds_checkpoints(output_dir: Path) -> bool:
    """``output_dir`` holds a checkpoint of some run (or one set aside by an interrupted re-save)."""
    if not output_dir.is_dir():
        return False
    return bool(list_checkpoints(output_dir)) or any(_ASIDE.match(c.name) for c in output_dir.iterdir())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_problem(path: Path, *, checksums: bool = True) -> str | None:
    """Why the checkpoint at ``path`` cannot be used, or ``None`` when it is intact.

    :param checksums: also compare every file's SHA-256 (reads everything); without, sizes only.
    """
    if not path.is_dir():
        return "no such folder"
    if (path / _PICKLE).exists() and not (path / MANIFEST).exists():
        return (
            f"it holds {_PICKLE}, a pickle from an earlier tuner version, which is never loaded because unpickling"
            " can run code"
        )
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("no files listed")
    except FileNotFoundError:
        return f"{MANIFEST} is missing (it is written last: the write did not finish or files were removed)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST} is unreadable ({exc})"
    for name, entry in files.items():
        file = path / name
        try:
            size = file.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != entry.get("size"):
            return f"{name} is {size} bytes, expected {entry.get('size')}"
    if checksums:
        for name, entry in files.items():
            if _sha256(path / name) != entry.get("sha256"):
                return f"{name} does not match its checksum"
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
        match = _ASIDE.match(child.name)
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
        info = json.loads((path / _STATE_JSON).read_text(encoding="utf-8"))
        int(info["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: {_STATE_JSON} is unreadable ({exc!r})") from None
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

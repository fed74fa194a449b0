"""Resumable checkpoints: written atomically, found by step, rotated.

A checkpoint is built in a hidden ``.checkpoint-N.partial`` folder and renamed to
``checkpoint-N`` only when complete, so a crash mid-write never leaves a folder
that looks like a checkpoint. ``state.json`` is written last inside it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from tuner.errors import CheckpointError

__all__ = [
    "ADAPTER_FILE",
    "list_checkpoints",
    "latest_checkpoint",
    "write_checkpoint",
    "read_checkpoint",
    "rotate_checkpoints",
    "clean_partials",
]

ADAPTER_FILE = "pytorch_lora_weights.safetensors"
_TRAINING_STATE = "training_state.pt"
_STATE_JSON = "state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    if not output_dir.is_dir():
        return []
    found = []
    for child in output_dir.iterdir():
        match = _NAME.match(child.name)
        if match and (child / _STATE_JSON).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def clean_partials(output_dir: Path) -> None:
    """Remove leftovers of checkpoints a crash interrupted."""
    if output_dir.is_dir():
        for child in output_dir.glob(".checkpoint-*.partial"):
            shutil.rmtree(child, ignore_errors=True)


def write_checkpoint(
    output_dir: Path,
    step: int,
    training_state: dict[str, Any],
    write_adapters: Any,
    info: dict[str, Any],
) -> Path:
    """Write ``checkpoint-<step>`` atomically and return its path.

    :param training_state: trainable tensors, optimizer state, RNG states (torch.save).
    :param write_adapters: ``callable(folder)`` exporting the loadable adapter file(s) into the checkpoint.
    :param info: JSON-able facts (step, seed, ...), written last as ``state.json``.
    """
    import torch

    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"checkpoint-{step}"
    partial = output_dir / f".checkpoint-{step}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    torch.save(training_state, partial / _TRAINING_STATE)
    write_adapters(partial)
    with (partial / _STATE_JSON).open("w") as f:
        json.dump({"step": step, **info}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():
        trash = output_dir / f".checkpoint-{step}.old.partial"
        os.replace(final, trash)
        os.replace(partial, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(partial, final)
    return final


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(training_state, info)`` of a checkpoint folder."""
    import torch

    if not (path / _STATE_JSON).is_file() or not (path / _TRAINING_STATE).is_file():
        raise CheckpointError(f"{path} is not a complete tuner checkpoint (no {_STATE_JSON} / {_TRAINING_STATE})")
    info = json.loads((path / _STATE_JSON).read_text())
    state = torch.load(path / _TRAINING_STATE, map_location="cpu", weights_only=False)
    return state, info


def rotate_checkpoints(output_dir: Path, limit: int | None) -> list[Path]:
    """Delete the oldest checkpoints beyond ``limit``; return what was deleted."""
    if limit is None:
        return []
    found = list_checkpoints(output_dir)
    doomed = [path for _, path in found[: max(0, len(found) - limit)]]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed

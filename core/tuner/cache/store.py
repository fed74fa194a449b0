"""Cache entries: content-addressed safetensors files, written atomically.

An entry's file name is a hash of everything that decides its content (the
source file's bytes or the caption, the encoder's identity, the settings), so a
changed input gets a new entry and an unchanged one is found again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["file_digest", "entry_key", "entry_path", "write_entry", "read_entry"]


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def entry_key(**parts: Any) -> str:
    """A short stable hash of named parts (strings, numbers, lists)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def entry_path(folder: Path, key: str) -> Path:
    # Two-character fan-out keeps directories small for large datasets.
    return folder / key[:2] / f"{key}.safetensors"


def write_entry(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` so that a crash never leaves a partial entry behind."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def read_entry(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))

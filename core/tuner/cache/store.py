"""Cache entries: content-addressed safetensors files, written atomically.

An entry's file name is a hash of everything that decides its content (the
source file's bytes or the caption, the encoder's identity, the frames, size and
crop), so a changed input gets a new entry and an unchanged one is found again.
With ``compress_disk_cache`` the same bytes are stored gzip-compressed under
``<key>.safetensors.gz``; either form is read, so switching the option re-encodes
nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.durable import disk_full_message, is_disk_full, process_alive
from tuner.errors import DataError

if TYPE_CHECKING:
    import torch

__all__ = [
    "entry_key",
    "entry_path",
    "find_entry",
    "entry_is_sound",
    "write_entry",
    "read_entry",
    "read_entry_bytes",
    "entry_tensors",
    "clean_partials",
]

_GZ = ".gz"
_STALE_AFTER_S = 24 * 3600


def entry_key(**parts: Any) -> str:
    """A short stable hash of named parts (strings, numbers, lists)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def entry_path(folder: Path, key: str) -> Path:
    """Where the entry ``key`` lives (uncompressed form). Two-character fan-out keeps folders small."""
    return folder / key[:2] / f"{key}.safetensors"


def find_entry(path: Path) -> Path | None:
    """The stored file of the entry at ``path``: plain or compressed, or ``None`` when missing."""
    if path.is_file():
        return path
    packed = path.with_name(path.name + _GZ)
    return packed if packed.is_file() else None


def entry_is_sound(path: Path) -> bool:
    """A cheap check that a plain entry is a whole safetensors file (its header parses and fits)."""
    if path.name.endswith(_GZ):
        return path.stat().st_size > 18  # gzip's own CRC guards the rest when read
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or 8 + n > size:
                return False
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return 8 + n + end == size
    except (OSError, ValueError, struct.error, KeyError, TypeError):
        return False


def write_entry(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None, compress: bool = False
) -> Path:
    """Write ``tensors`` for the entry at ``path`` so that a crash never leaves a partial entry behind."""
    from safetensors.torch import save

    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    target = path.with_name(path.name + _GZ) if compress else path
    if compress:
        blob = gzip.compress(blob, compresslevel=3, mtime=0)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _store_bytes(tmp, blob)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if not is_disk_full(exc):
            raise
        what = f"the cache entry {target.name}"
        where = "cache_dir (or the dataset's cache_dir_vae / cache_dir)"
        raise DataError(disk_full_message(what, target.parent.parent, len(blob), where, exc)) from None
    os.replace(tmp, target)
    return target


def _store_bytes(path: Path, blob: bytes) -> None:
    with path.open("wb") as f:
        f.write(blob)


def read_entry(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an entry (``path`` may name either stored form)."""
    from safetensors.torch import load, load_file

    stored = find_entry(path) if not path.is_file() else path
    if stored is None:
        raise FileNotFoundError(path)
    if stored.name.endswith(_GZ):
        return load(gzip.decompress(stored.read_bytes()))
    return load_file(str(stored))


def read_entry_bytes(path: Path) -> bytes:
    """The safetensors bytes of an entry, decompressed: file work only, safe on a helper thread (no torch)."""
    stored = find_entry(path) if not path.is_file() else path
    if stored is None:
        raise FileNotFoundError(path)
    blob = stored.read_bytes()
    return gzip.decompress(blob) if stored.name.endswith(_GZ) else blob


def entry_tensors(blob: bytes) -> dict[str, torch.Tensor]:
    """The tensors of `read_entry_bytes`' result (torch work: call it on the thread that trains)."""
    from safetensors.torch import load

    return load(blob)


def clean_partials(folder: Path) -> int:
    """Remove temporary files left by writers that died (never those of a live process); return how many.

    A temporary file names its writer's process id. One whose process still runs is
    kept, unless it is older than a day (the id was reused by an unrelated process).
    """
    removed = 0
    if not folder.is_dir():
        return 0
    stale = time.time() - _STALE_AFTER_S
    for tmp in folder.rglob(".*.partial"):
        try:
            pid = int(tmp.name.rsplit(".", 2)[-2])
        except ValueError:
            pid = -1
        try:
            old = tmp.stat().st_mtime < stale
        except OSError:
            continue
        if pid != os.getpid() and pid > 0 and process_alive(pid) and not old:
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


"""The training state on disk as safetensors + JSON, never a pickle.

Optimizer, schedule, EMA and RNG states are nested dicts, lists and tuples of
numbers, strings and tensors. The tensors go into ``training_state.safetensors``
under the keys ``0, 1, 2, ...``; the structure goes into ``training_state.json``
with ``{"$tensor": "3"}`` where a tensor was. Nothing read back can run code
(unpickling a crafted ``.pt`` file can), and the bytes of every tensor come back
exactly, so a resumed run continues bit for bit.

JSON forms besides plain values: ``{"$tensor": key}``, ``{"$tuple": [...]}`` and
``{"$items": [[key, value], ...]}`` for a dict whose keys are not all plain strings
(optimizer states are keyed by parameter index).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import CheckpointError

if TYPE_CHECKING:
    import torch

__all__ = ["STATE_TENSORS", "STATE_STRUCTURE", "write_state", "read_state", "state_nbytes"]

STATE_TENSORS = "training_state.safetensors"
STATE_STRUCTURE = "training_state.json"
_FORMAT = 1


def _encode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    import torch

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value
        return {"$tensor": key}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v, tensors, f"{where}.{k}") for k, v in value.items()}
        items = []
        for k, v in value.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"training state {where}: key {k!r} is neither a string nor an integer")
            items.append([k, _encode(v, tensors, f"{where}.{k}")])
        return {"$items": items}
    raise TypeError(f"training state {where}: {type(value).__name__} cannot be stored (tensors, numbers, strings only)")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, inner), = value.items()
        if tag == "$tensor":
            if inner not in tensors:
                raise KeyError(inner)
            return tensors[inner]
        if tag == "$tuple":
            return tuple(_decode(v, tensors) for v in inner)
        if tag == "$items":
            return {k: _decode(v, tensors) for k, v in inner}
    return {k: _decode(v, tensors) for k, v in value.items()}


def _cpu_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors that share no memory (safetensors refuses shared storage)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in tensors.items():
        t = tensor.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen:
            t = t.clone()
        elif ptr != -1:
            seen.add(ptr)
        out[key] = t
    return out


def state_nbytes(state: Any) -> int:
    """Bytes of the tensors in ``state`` (what writing it needs on disk, near enough)."""
    import torch

    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_nbytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_nbytes(v) for v in state)
    return 0


def write_state(folder: Path, state: dict[str, Any]) -> list[Path]:
    """Write ``state`` into ``folder``; return the two files written (not yet flushed to disk)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, tensors, "state")
    save_file(_cpu_tensors(tensors), str(folder / STATE_TENSORS), metadata={"format": f"tuner-state-{_FORMAT}"})
    text = json.dumps({"format": _FORMAT, "state": structure}, indent=1)
    (folder / STATE_STRUCTURE).write_text(text, encoding="utf-8")
    return [folder / STATE_TENSORS, folder / STATE_STRUCTURE]


def read_state(folder: Path) -> dict[str, Any]:
    """The state written by `write_state`; anything unreadable is a `CheckpointError` naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from tuner.jsonfile import loads

    try:
        data = loads((folder / STATE_STRUCTURE).read_text(encoding="utf-8"))
    except RecursionError:
        raise CheckpointError(f"{folder / STATE_STRUCTURE} is nested too deeply: the checkpoint is damaged") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{folder / STATE_STRUCTURE} cannot be read ({exc}): the checkpoint is damaged") from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise CheckpointError(f"{folder / STATE_STRUCTURE} is not a tuner training state of format {_FORMAT}")
    try:
        tensors = load_file(str(folder / STATE_TENSORS))
    except (OSError, SafetensorError, ValueError) as exc:
        raise CheckpointError(f"{folder / STATE_TENSORS} cannot be read ({exc}): the checkpoint is damaged") from None
    try:
        state = _decode(data["state"], tensors)
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{folder / STATE_STRUCTURE} does not match {STATE_TENSORS} ({exc!r})"[:500]) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{folder / STATE_STRUCTURE} holds no training state")
    return state

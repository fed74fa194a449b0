"""Which samples form each micro-batch, as a pure function of the micro-batch's index.

The order is a fresh seeded permutation each epoch. Because a batch depends only
on ``(seed, index)``, a resumed run continues mid-epoch exactly where the
interrupted one stopped, with nothing to save.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.cache.store import read_entry
from tuner.errors import DataError

if TYPE_CHECKING:
    import torch

    from tuner.cache.build import CachedSample

__all__ = ["batches_per_epoch", "batch_indices", "load_batch"]


def batches_per_epoch(num_samples: int, batch_size: int) -> int:
    count = num_samples // batch_size
    if count == 0:
        raise DataError(
            f"{num_samples} sample(s) cannot fill one batch of train_batch_size = {batch_size}: "
            "add clips or lower train_batch_size"
        )
    return count


def batch_indices(index: int, num_samples: int, batch_size: int, seed: int) -> list[int]:
    """Sample indices of micro-batch ``index`` (0-based, counted across epochs)."""
    import torch

    per_epoch = batches_per_epoch(num_samples, batch_size)
    epoch, within = divmod(index, per_epoch)
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return order[within * batch_size : (within + 1) * batch_size].tolist()


def load_batch(
    samples: Sequence[CachedSample], indices: Sequence[int]
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Stacked cached latents of ``indices`` and the per-sample prompt encodings."""
    import torch

    latents = [read_entry(samples[i].latents) for i in indices]
    prompts = [read_entry(samples[i].text) for i in indices]
    keys = latents[0].keys()
    try:
        stacked = {k: torch.stack([entry[k] for entry in latents]) for k in keys}
    except RuntimeError as exc:
        paths = ", ".join(str(Path(samples[i].source).name) for i in indices)
        raise DataError(f"samples of different shapes in one batch ({paths}): {exc}") from None
    return stacked, prompts

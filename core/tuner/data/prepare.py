"""From the ``[data]`` section to cached, batchable samples."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from tuner.cache.build import CachedSample
    from tuner.config import RunConfig
    from tuner.data.local import Sample
    from tuner.plugins import PluginHost
    from tuner.types import ModelBundle

__all__ = ["scan_samples", "prepare_samples"]


def scan_samples(config: RunConfig) -> list[Sample]:
    """Find the training files and captions; fails fast, before any model loads."""
    from tuner.data.local import scan_folder

    dc = config.data
    return scan_folder(dc.instance_data_dir, dc.caption_strategy, dc.instance_prompt)


def prepare_samples(
    host: PluginHost, bundle: ModelBundle, config: RunConfig, samples: list[Sample], device: torch.device
) -> list[CachedSample]:
    """Encode what is not cached yet and check that the data can fill a batch."""
    from pathlib import Path

    from tuner.cache.build import build_caches
    from tuner.data.batches import batches_per_epoch

    dc = config.data
    cached = build_caches(
        host,
        bundle,
        samples,
        cache_dir=Path(dc.cache_dir),
        num_frames=dc.num_frames,
        resolution=dc.resolution,
        vae_batch_size=dc.vae_batch_size,
        text_batch_size=dc.text_batch_size,
        device=device,
    )
    batches_per_epoch(len(cached), config.train.train_batch_size)
    return cached

"""``tuner cache``: build every cache a run will read, without training.

The same steps a run takes before its first step (scan, load the model, prepare
it, plan, encode what the caches lack), so a later ``tuner train`` with the same
config finds everything cached and encodes nothing: data can be prepared on one
machine and trained on another (caches are keyed by content, not by paths on disk).
Several processes (``--num-processes``) share the encoding as they do in a run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuner.config import RunConfig
    from tuner.data.batches import TrainingData
    from tuner.plugins import PluginHost

__all__ = ["build_caches"]


def build_caches(config: RunConfig, host: PluginHost) -> TrainingData:
    """Encode whatever the run's latent, feature and text caches lack; return the planned data."""
    import torch

    from tuner.data.prepare import prepare_samples, scan_samples
    from tuner.distributed import World
    from tuner.progress import set_log_format
    from tuner.train.run import make_accelerator

    set_log_format(config.section("console").log_format)
    accelerator = make_accelerator(config)
    world = World.of(accelerator, config.train.gradient_accumulation_steps)
    scan = world.main_first(scan_samples, config)
    torch.manual_seed(config.train.seed)
    bundle = host.load_model(config, accelerator.device)
    # As a run does before caching: a feature that changes the encoders (precision, offload) changes the keys.
    host.prepare_model(bundle, config, "base", accelerator.device)
    return prepare_samples(host, bundle, config, scan, accelerator.device, world)

"""The state a model is put in to render or evaluate without touching training."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuner.types.bundle import ModelBundle

__all__ = ["inference_state"]


@contextmanager
def inference_state(bundle: ModelBundle) -> Iterator[None]:
    """Eval mode, no token routing, no gradients and a forked RNG; all restored on exit.

    Forking the RNG is what keeps validation from changing training: whatever
    a sampler draws, the next training step sees the random state it would
    have seen without it.
    """
    import torch

    router, bundle.run.router = bundle.run.router, None
    modules = bundle.denoisers()
    was_training = [m.training for m in modules]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        for module in modules:
            module.eval()
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            yield
    finally:
        bundle.run.router = router
        for module, mode in zip(modules, was_training):
            module.train(mode)

"""Measuring what a training step keeps and computes, on any device (CPU included).

A family's `tuner.family_profile.ActivationCounts` and FLOP counts are claims;
these two functions measure the truth on a small model, so a test can hold the
estimate to it: the bytes of every tensor autograd saves for the backward pass
(torch's saved-tensor hooks, each storage counted once, parameters left out)
and the FLOPs torch's ``FlopCounterMode`` counts for a forward and backward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["saved_activation_bytes", "step_flops"]


def saved_activation_bytes(forward: Callable[[], torch.Tensor], parameters: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct tensors ``forward()`` saves for the backward pass, weights excluded."""
    import torch

    weights = {p.untyped_storage().data_ptr() for p in parameters}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(saved.values())


def step_flops(forward: Callable[[], torch.Tensor]) -> int:
    """FLOPs of ``forward()`` and the backward pass of its output's sum, as torch counts them.

    Attention runs as plain matrix products here (the math kernel): the counter does not see inside
    the CPU's fused kernel, and a fused kernel does the same products.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel([SDPBackend.MATH]):
        forward().float().sum().backward()
    return counter.get_total_flops()

"""Flow-matching noise levels (sigma in [0, 1]) for training.

Pure functions of a generator, so every family samples the same way and a
resumed run draws the same values as an uninterrupted one.
"""

from __future__ import annotations

import torch

__all__ = ["shift_sigmas", "sample_sigmas", "add_noise"]


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Move sigmas towards 1 (``shift > 1``) or 0 (``shift < 1``), as flow-matching schedulers do."""
    if shift == 1.0:
        return sigmas
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def sample_sigmas(
    batch_size: int,
    generator: torch.Generator,
    *,
    shift: float = 1.0,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Logit-normal sigmas, then shifted: ``(batch,)`` float32."""
    z = torch.randn(batch_size, generator=generator, device=generator.device) * logit_std + logit_mean
    return shift_sigmas(torch.sigmoid(z), shift).to(device)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """``(1 - sigma) * x0 + sigma * noise``, with sigma broadcast over all but the batch dimension."""
    s = sigmas.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1.0 - s) * x0 + s * noise

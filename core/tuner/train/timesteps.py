"""Flow-matching noise levels (sigma in [0, 1]) for training.

Pure functions of a generator, so every family samples the same way and a
resumed run draws the same values as an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tuner.config import RunConfig

__all__ = [
    "shift_sigmas",
    "unshift_sigmas",
    "auto_shift",
    "sample_sigmas",
    "training_sigmas",
    "draw_noise",
    "add_noise",
    "velocity_target",
    "velocity_errors",
]

# Auto shift: mu grows linearly with the tokens of one frame (16x16-pixel
# patches), from 0.5 at 256x256 to 1.15 at 1024x1024; shift = e^mu. This is
# diffusers' `calculate_shift` with its default settings (base/max image
# sequence length 256/4096, base/max shift 0.5/1.15) followed by the
# exponential time shift of `use_dynamic_shifting`, which equals `shift_sigmas`
# with shift = e^mu.
_BASE_TOKENS, _MAX_TOKENS, _BASE_MU, _MAX_MU = 256, 4096, 0.5, 1.15


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Move sigmas towards 1 (``shift > 1``) or 0 (``shift < 1``), as flow-matching schedulers do."""
    if shift == 1.0:
        return sigmas
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def auto_shift(pixel_area: int) -> float:
    """The shift for frames of ``pixel_area`` pixels (width x height)."""
    tokens = pixel_area / 256.0
    mu = _BASE_MU + (tokens - _BASE_TOKENS) * (_MAX_MU - _BASE_MU) / (_MAX_TOKENS - _BASE_TOKENS)
    return math.exp(mu)


def unshift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The inverse of `shift_sigmas`."""
    if shift == 1.0:
        return sigmas
    return sigmas / (shift - (shift - 1.0) * sigmas)


def sample_sigmas(
    batch_size: int,
    generator: torch.Generator,
    *,
    shift: float = 1.0,
    distribution: str = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    sigma_range: tuple[float, float] = (0.0, 1.0),
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Sigmas from ``distribution`` (logit-normal or uniform), then shifted: ``(batch,)`` float32.

    With a ``sigma_range`` narrower than ``[0, 1]`` (one expert of a model that
    splits the noise range), the draw is the same distribution restricted to
    that range: the sigmas that expert would see in a run over the whole
    range, drawn by inverting the distribution function, never by rejection,
    so every call takes one number per sample from ``generator``.
    """
    low, high = sigma_range
    if (low, high) == (0.0, 1.0):
        if distribution == "uniform":
            u = torch.rand(batch_size, generator=generator, device=generator.device)
        else:
            z = torch.randn(batch_size, generator=generator, device=generator.device)
            u = torch.sigmoid(z * logit_std + logit_mean)
        return shift_sigmas(u, shift).to(device)
    # The bounds of the range before the shift (the shift is monotonic).
    bounds = unshift_sigmas(torch.tensor([low, high], dtype=torch.float64), shift)
    r = torch.rand(batch_size, generator=generator, device=generator.device).double().cpu()
    if distribution == "uniform":
        u = bounds[0] + r * (bounds[1] - bounds[0])
    else:
        # Standard-normal bounds of the logit, then the inverse normal CDF between them.
        z_bounds = (torch.logit(bounds) - logit_mean) / logit_std
        cdf = torch.special.ndtr(z_bounds)
        z = torch.special.ndtri(cdf[0] + r * (cdf[1] - cdf[0]))
        u = torch.sigmoid(z * logit_std + logit_mean)
    # Clamp in the dtype the sigmas are used in: rounding must not carry one across a bound.
    sigmas = shift_sigmas(u, shift).float().clamp(low, high)
    if high < 1.0:  # the range is half-open: high itself belongs to the next expert
        sigmas = torch.minimum(sigmas, torch.tensor(high).nextafter(torch.tensor(0.0)))
    return sigmas.to(device)


def training_sigmas(
    config: RunConfig,
    batch_size: int,
    generator: torch.Generator,
    pixel_area: int,
    device: torch.device | str,
    sigma_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Sigmas as the ``[train]`` section asks; families call this from `compute_loss`.

    :param pixel_area: width x height of the batch's frames in pixels (for the auto shift).
    :param sigma_range: the noise levels the trained denoisers own
        (`ModelBundle.sigma_range`); the draw is restricted to it.
    """
    tc = config.train
    shift = auto_shift(pixel_area) if tc.flow_schedule_auto_shift else tc.flow_schedule_shift
    return sample_sigmas(
        batch_size,
        generator,
        shift=shift,
        distribution=tc.flow_timestep_sampling,
        logit_mean=tc.flow_logit_mean,
        logit_std=tc.flow_logit_std,
        sigma_range=sigma_range,
        device=device,
    )


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """``(1 - sigma) * x0 + sigma * noise``, with sigma broadcast over all but the batch dimension."""
    s = sigmas.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1.0 - s) * x0 + s * noise


def draw_noise(x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise shaped like ``x0``, drawn from ``generator`` (on its device), then moved to ``x0``'s."""
    return torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """What a flow-matching denoiser predicts at every noise level: ``noise - x0`` (d noisy / d sigma)."""
    return noise - x0


def velocity_errors(
    pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, loss_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample mean squared error of a predicted velocity, in float32: ``(batch,)``.

    Its mean over the batch is the training loss (every sample weighs the same at
    every sigma); the evaluation loss reports it per sample. ``loss_mask``
    (broadcastable to the latents, 1 = counted) limits the mean to the latents it
    counts, e.g. a clean conditioning frame left out of the loss.
    """
    err = (pred.float() - velocity_target(x0.float(), noise.float())).pow(2)
    if loss_mask is None:
        return err.flatten(1).mean(1)
    weight = loss_mask.to(err.dtype).expand_as(err)
    return (err * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1)

"""Wan's flow-matching training objective."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.train.timesteps import add_noise, sample_sigmas
from tuner.types import LossOutput

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig
    from tuner.types import ModelBundle

__all__ = ["flow_matching_loss"]


def flow_matching_loss(
    bundle: ModelBundle, batch: dict[str, torch.Tensor], generator: torch.Generator, config: RunConfig
) -> LossOutput:
    """noisy = (1 - s) x0 + s noise; the transformer predicts the velocity noise - x0 at t = 1000 s."""
    import torch
    import torch.nn.functional as F

    x0 = batch["latents"].float()
    sigmas = sample_sigmas(x0.shape[0], generator, shift=config.train.flow_schedule_shift, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
    noisy = add_noise(x0, noise, sigmas)
    dtype = bundle.components["dtype"]
    pred = bundle.denoiser(
        hidden_states=noisy.to(dtype),
        timestep=sigmas * 1000.0,
        encoder_hidden_states=batch["prompt_embeds"].to(dtype),
        return_dict=False,
    )[0]
    loss = F.mse_loss(pred.float(), noise - x0)
    return LossOutput(loss=loss, logs={"sigma_mean": float(sigmas.mean())})

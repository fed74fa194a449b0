"""Wan's flow-matching training objective."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.train.timesteps import add_noise, training_sigmas
from tuner.types import LossOutput

from tuner_wan.experts import run_experts

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
    vae = bundle.components["vae"].config
    pixel_area = x0.shape[-1] * x0.shape[-2] * vae.scale_factor_spatial**2
    # Only the noise levels of the experts being trained (all of them for a single transformer).
    sigmas = training_sigmas(config, x0.shape[0], generator, pixel_area, x0.device, bundle.sigma_range())
    noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
    noisy = add_noise(x0, noise, sigmas)
    dtype = bundle.components["dtype"]
    inputs = {
        "hidden_states": noisy.to(dtype),
        "timestep": sigmas * 1000.0,
        "encoder_hidden_states": batch["prompt_embeds"].to(dtype),
    }
    router = bundle.router

    def forward(transformer: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if router is not None and transformer.training:
            from tuner_wan.routing import routed_forward

            # accelerate runs the model's own forward under autocast when mixed precision is on; the
            # routed forward calls the blocks directly, so it opens the same autocast here. The router
            # draws after the noise, so routing changes neither the noise nor the timesteps.
            # T2V has no conditioning frames and no loss mask, so no token is forced to stay.
            amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.train.mixed_precision)
            with torch.autocast(x0.device.type, dtype=amp or torch.float32, enabled=amp is not None):
                return routed_forward(transformer, **inputs, router=router, generator=generator)
        return transformer(**inputs, return_dict=False)[0]

    pred = run_experts(bundle, sigmas, inputs, forward)
    loss = F.mse_loss(pred.float(), noise - x0)
    return LossOutput(loss=loss, logs={"sigma_mean": float(sigmas.mean())})

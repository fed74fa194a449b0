"""Flux's flow-matching objective: packed latents, image/text ids, guidance embedding, token routing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.train.timesteps import add_noise, draw_noise, training_sigmas, velocity_errors
from tuner.types import LossOutput

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig
    from tuner.types import ModelBundle

__all__ = ["pack", "transformer_inputs", "flow_matching_loss", "eval_errors"]


def pack(latents: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H/2 * W/2, 4C)``: 2x2 patches as tokens, as ``FluxPipeline._pack_latents``."""
    from diffusers import FluxPipeline

    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def transformer_inputs(
    bundle: ModelBundle, batch: dict[str, torch.Tensor], noisy: torch.Tensor, sigmas: torch.Tensor
) -> dict[str, torch.Tensor | None]:
    """The keyword arguments of ``FluxTransformer2DModel.forward`` for packed ``noisy`` latents at ``sigmas``.

    As FluxPipeline calls it: timestep and guidance in [0, 1] (the model
    multiplies by 1000), text ids all zero, image ids the (row, column) of each
    2x2 patch, guidance only for models with a guidance embedding.
    """
    import torch
    from diffusers import FluxPipeline

    transformer = bundle.denoiser
    dtype = bundle.components["dtype"]
    latents = batch["latents"]
    b, _, h, w = latents.shape
    device = latents.device
    embeds = batch["prompt_embeds"].to(dtype)
    guidance = None
    if transformer.config.guidance_embeds:
        guidance = torch.full((b,), bundle.components["guidance_value"], device=device, dtype=torch.float32)
    return {
        "hidden_states": noisy.to(dtype),
        "encoder_hidden_states": embeds,
        "pooled_projections": batch["pooled_prompt_embeds"].to(dtype),
        "timestep": sigmas.to(device),
        "img_ids": FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype),
        "txt_ids": torch.zeros(embeds.shape[1], 3, device=device, dtype=dtype),
        "guidance": guidance,
    }


def flow_matching_loss(
    bundle: ModelBundle, batch: dict[str, torch.Tensor], generator: torch.Generator, config: RunConfig
) -> LossOutput:
    """noisy = (1 - s) x0 + s noise on packed latents; the transformer predicts the velocity noise - x0."""
    import torch

    x0 = batch["latents"].float()
    # Pixels per image: the core's auto shift is diffusers' calculate_shift on (H/16) x (W/16) packed tokens.
    pixel_area = x0.shape[-1] * x0.shape[-2] * bundle.components["vae_scale_factor"] ** 2
    sigmas = training_sigmas(config, x0.shape[0], generator, pixel_area, x0.device)
    noise = draw_noise(x0, generator)
    x0, noise = pack(x0), pack(noise)
    inputs = transformer_inputs(bundle, batch, add_noise(x0, noise, sigmas), sigmas)
    transformer = bundle.denoiser
    router = bundle.router
    if router is not None and transformer.training:
        from tuner_flux.routing import routed_forward

        # accelerate runs the model's own forward under autocast when mixed precision is on; the routed
        # forward calls the blocks directly, so it opens the same autocast. The router draws after the
        # noise, so routing changes neither the noise nor the timesteps.
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.train.mixed_precision)
        with torch.autocast(x0.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            pred = routed_forward(transformer, **inputs, router=router, generator=generator)
    else:
        pred = transformer(**inputs, return_dict=False)[0]
    loss = velocity_errors(pred, x0, noise).mean()
    return LossOutput(loss=loss, logs={"sigma_mean": float(sigmas.mean())}, sigmas=sigmas)


def eval_errors(
    bundle: ModelBundle, batch: dict[str, torch.Tensor], sigmas: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Per-sample velocity MSE at ``sigmas``, as `flow_matching_loss` computes it."""
    x0 = batch["latents"].float()
    sigmas = sigmas.to(x0.device)
    noise = draw_noise(x0, generator)
    x0, noise = pack(x0), pack(noise)
    inputs = transformer_inputs(bundle, batch, add_noise(x0, noise, sigmas), sigmas)
    pred = bundle.denoiser(**inputs, return_dict=False)[0]
    return velocity_errors(pred, x0, noise)

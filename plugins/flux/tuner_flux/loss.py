"""Flux's flow-matching objective: packed latents, image/text ids, guidance embedding, token routing."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from tuner.train.precision import forward_autocast
from tuner.train.noising import noisy_inputs
from tuner.train.timesteps import add_noise, draw_noise, training_sigmas, velocity_errors
from tuner.types.training import LossOutput

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig
    from tuner.types.bundle import ModelBundle

__all__ = ["pack", "transformer_inputs", "flow_matching_loss", "eval_errors"]


def pack(latents: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H/2 * W/2, 4C)``: 2x2 patches as tokens, as ``FluxPipeline._pack_latents``."""
    from diffusers import FluxPipeline

    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


@functools.lru_cache(maxsize=32)
def _ids(rows: int, cols: int, text: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(image ids, text ids) for a ``rows`` x ``cols`` grid of packed tokens and ``text`` text tokens.

    Built once per shape (a run sees a few buckets) rather than every step: the
    transformer only reads them.
    """
    import torch
    from diffusers import FluxPipeline

    return (
        FluxPipeline._prepare_latent_image_ids(1, rows, cols, device, dtype),
        torch.zeros(text, 3, device=device, dtype=dtype),
    )


@functools.lru_cache(maxsize=32)
def _guidance(batch_size: int, value: float, device: torch.device) -> torch.Tensor:
    """The guidance value for each sample, float32 as FluxPipeline passes it; built once per batch size."""
    import torch

    return torch.full((batch_size,), value, device=device, dtype=torch.float32)


def transformer_inputs(
    bundle: ModelBundle, batch: dict[str, torch.Tensor], noisy: torch.Tensor, sigmas: torch.Tensor
) -> dict[str, torch.Tensor | None]:
    """The keyword arguments of ``FluxTransformer2DModel.forward`` for packed ``noisy`` latents at ``sigmas``.

    As FluxPipeline calls it: timestep and guidance in [0, 1] (the model
    multiplies by 1000), text ids all zero, image ids the (row, column) of each
    2x2 patch, guidance only for models with a guidance embedding.
    """
    dtype = bundle.components["dtype"]
    b, _, h, w = batch["latents"].shape
    device = noisy.device
    embeds = batch["prompt_embeds"]
    # Shared across steps (and with inference-mode callers: no op saves them for backward or writes them).
    img_ids, txt_ids = _ids(h // 2, w // 2, embeds.shape[1], device, dtype)
    guidance = None
    if bundle.denoiser.config.guidance_embeds:
        guidance = _guidance(b, bundle.components["guidance_value"], device)
    return {
        "hidden_states": noisy.to(dtype),
        "encoder_hidden_states": embeds.to(dtype),
        "pooled_projections": batch["pooled_prompt_embeds"].to(dtype),
        "timestep": sigmas.to(device),
        "img_ids": img_ids,
        "txt_ids": txt_ids,
        "guidance": guidance,
    }


def flow_matching_loss(
    bundle: ModelBundle, batch: dict[str, torch.Tensor], generator: torch.Generator, config: RunConfig
) -> LossOutput:
    """noisy = (1 - s) x0 + s noise on packed latents; the transformer predicts the velocity noise - x0."""
    latents = batch["latents"]
    # Pixels per image: the core's auto shift is diffusers' calculate_shift on (H/16) x (W/16) packed tokens.
    pixel_area = latents.shape[-1] * latents.shape[-2] * bundle.components["vae_scale_factor"] ** 2
    sigmas = training_sigmas(config, latents.shape[0], generator, pixel_area, latents.device)
    # Read before the forward is queued: on an accelerator, reading after it would wait for the forward.
    logs = {"sigma_mean": float(sigmas.mean())}
    x0 = pack(latents.float())
    noise = draw_noise(x0, generator)  # drawn packed: i.i.d. either way, and one copy fewer than packing it
    transformer = bundle.denoiser

    def predict(x: torch.Tensor, levels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        # Lent to a feature that rewrites the input (scheduled sampling): these rows' conditioning, packed.
        part = {k: v.index_select(0, rows.to(v.device)) for k, v in batch.items()}
        return transformer(**transformer_inputs(bundle, part, x, levels), return_dict=False)[0]

    # The core's noising: (1 - s) x0 + s noise, or a feature's rewrite of it.
    noised = noisy_inputs(bundle, x0, noise, sigmas, generator, predict)
    logs.update(noised.logs)
    inputs = transformer_inputs(bundle, batch, noised.noisy, sigmas)
    router = bundle.run.router
    if router is not None and transformer.training:
        from tuner_flux.routing import routed_forward

        # The routed forward calls the blocks directly, past accelerate's autocast: it opens the same one.
        # The router draws after the noise, so routing changes neither the noise nor the timesteps.
        with forward_autocast(config, x0.device.type):
            pred = routed_forward(transformer, **inputs, router=router, generator=generator)
    else:
        pred = transformer(**inputs, return_dict=False)[0]
    loss = noised.errors(pred).mean()
    return LossOutput(loss=loss, logs=logs, sigmas=sigmas)


def eval_errors(
    bundle: ModelBundle, batch: dict[str, torch.Tensor], sigmas: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Per-sample velocity MSE at ``sigmas``, as `flow_matching_loss` computes it."""
    x0 = pack(batch["latents"].float())
    sigmas = sigmas.to(x0.device)
    noise = draw_noise(x0, generator)
    inputs = transformer_inputs(bundle, batch, add_noise(x0, noise, sigmas), sigmas)
    pred = bundle.denoiser(**inputs, return_dict=False)[0]
    return velocity_errors(pred, x0, noise)

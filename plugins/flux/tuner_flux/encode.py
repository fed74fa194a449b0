"""Images to packed-ready latents, prompts to CLIP + T5 embeddings, as FluxPipeline makes them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.errors import PluginError

if TYPE_CHECKING:
    import torch

    from tuner.types.bundle import ModelBundle

__all__ = ["encode_images", "encode_texts"]


def encode_images(bundle: ModelBundle, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """``(B, 1, C, H, W)`` pixels in [-1, 1] -> per-image ``{"latents": (C, H/8, W/8)}``, shifted and scaled.

    The cache keeps latents unpacked (an image's own shape); the loss packs them
    into 2x2 patches as ``FluxPipeline._pack_latents`` does.
    """
    if pixels.shape[1] != 1:
        # The bundle's max_frames = 1 makes the data plan hand over stills only.
        raise PluginError(f"Flux encodes single images, got {pixels.shape[1]} frames per sample")
    vae = bundle.components["vae"]
    # The distribution's mode: deterministic, so a cache entry never depends on luck.
    latents = vae.encode(pixels[:, 0].to(dtype=vae.dtype)).latent_dist.mode()
    latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
    return [{"latents": latent} for latent in latents.float().cpu()]


def encode_texts(bundle: ModelBundle, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
    """Per-prompt ``{"prompt_embeds": (t5_max_length, 4096), "pooled_prompt_embeds": (768,)}``.

    The T5 sequence keeps its padding: Flux attends to all of it (FluxPipeline
    passes no mask), so the cache holds exactly what the transformer sees.
    """
    pipe = bundle.components["pipeline"]
    embeds, pooled, _ = pipe.encode_prompt(
        prompt=prompts,
        prompt_2=None,
        device=pipe._execution_device,  # where the work runs: the encoders may sit in CPU memory between uses
        max_sequence_length=bundle.components["max_sequence_length"],
    )
    return [{"prompt_embeds": e.cpu(), "pooled_prompt_embeds": p.cpu()} for e, p in zip(embeds, pooled)]

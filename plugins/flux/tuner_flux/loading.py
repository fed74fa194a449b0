"""Loading Flux's parts with diffusers / transformers ``from_pretrained``.

One diffusers-layout folder or hub id, with an optional override for the
transformer (a folder, or one ``.safetensors`` file in diffusers or original
key names: Flux-derived checkpoints usually ship that way).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuner.errors import ConfigError
from tuner.loading import fingerprint, load_denoiser
from tuner.train.precision import base_weight_dtype

from tuner_flux.settings import FLAVOURS

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig

    from tuner_flux.settings import FluxSection

__all__ = ["load_components", "t5_max_length"]

# FluxPipeline's own T5 lengths: dev was trained with 512 tokens, schnell with 256.
_T5_LENGTHS = {"dev": 512, "schnell": 256}


def t5_max_length(section: FluxSection) -> int:
    return section.flux_t5_max_length or _T5_LENGTHS[section.flux_model_flavour]


def load_components(section: FluxSection, config: RunConfig, device: torch.device) -> dict[str, Any]:
    """Every Flux part, frozen; the encoders on ``device``, the transformer on the CPU until the core places it.

    The VAE stays in float32 for clean latents.
    """
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    dtype = base_weight_dtype(config)
    sources = section.model_sources(config.resolve_path, FLAVOURS[section.flux_model_flavour][0])
    base, revision = sources.base, sources.revision
    try:
        transformer = load_denoiser(
            FluxTransformer2DModel, sources.transformer, base=base, dtype=dtype, revision=revision,
            subfolder=sources.transformer_subfolder, option=section.source_option("transformer"),
            diffusers_prefixes=("transformer_blocks.0.", "x_embedder."),
        )
        vae = AutoencoderKL.from_pretrained(base, subfolder="vae", torch_dtype=torch.float32, revision=revision)
        clip = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", torch_dtype=dtype, revision=revision)
        t5 = T5EncoderModel.from_pretrained(base, subfolder="text_encoder_2", torch_dtype=dtype, revision=revision)
        tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", revision=revision)
        tokenizer_2 = T5TokenizerFast.from_pretrained(base, subfolder="tokenizer_2", revision=revision)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(base, subfolder="scheduler", revision=revision)
    except OSError as exc:
        raise ConfigError(f"cannot load Flux from '{base}': {str(exc).splitlines()[0]}") from None
    for module in (transformer, vae, clip, t5):
        module.requires_grad_(False)
    for module in (vae, clip, t5):
        module.to(device).eval()
    pipeline = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip,
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipeline.set_progress_bar_config(disable=True)
    max_length = t5_max_length(section)
    cache_id = fingerprint("flux-1", dict(vae.config), clip.config.to_dict(), t5.config.to_dict(), base, max_length)
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": clip,
        "text_encoder_2": t5,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": scheduler,
        "pipeline": pipeline,
        "dtype": dtype,
        "vae_scale_factor": 2 ** (len(vae.config.block_out_channels) - 1),
        "max_sequence_length": max_length,
        "guidance_value": section.flux_guidance_value,
        "cache_id": cache_id,
        "base": base,
    }

"""The Wan model family, as tuner hooks.

This module is the ``tuner.plugins`` entry point. It imports nothing heavy:
each hook imports what it needs when called.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner import hookimpl

from tuner_wan.flavours import FLAVOURS
from tuner_wan.settings import WanSection

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig
    from tuner.family_profile import FamilyProfile
    from tuner.lora.layouts import LoraNaming
    from tuner.types.adapter import AdapterWeights
    from tuner.types.bundle import ModelBundle
    from tuner.types.training import LossOutput
    from tuner.types.validation import ValidationRequest, ValidationResult

FAMILY = "wan"
# Attention and feed-forward projections of every block: what LoRA adapts by default.
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
# Wan 2.1 is sensitive to quantization (the quickstart guide): 4-bit and lower weights ruin it.
_TOO_COARSE = (
    "Wan 2.1 is sensitive to quantization: with {bits} weights (like NF4/int4 and below) its output breaks down;"
    " use int8-quanto or fp8-quanto"
)
REFUSED_PRECISIONS = {"int4-quanto": _TOO_COARSE.format(bits="4-bit"), "int2-quanto": _TOO_COARSE.format(bits="2-bit")}


@hookimpl
def register_config_sections(register: Any) -> None:
    register("wan", WanSection)


@hookimpl
def register_model_families(register: Any) -> None:
    register(FAMILY, "Wan 2.1 and 2.2: text-to-video, image-to-video and the A14B noise experts (diffusers layout)")


@hookimpl
def load_model(config: RunConfig, device: torch.device) -> ModelBundle:
    from tuner.types.bundle import ModelBundle

    from tuner.progress import notice

    from tuner_wan.encode import count_tokens
    from tuner_wan.experts import single_stage_note
    from tuner_wan.loading import load_components

    section = config.section("wan")
    flavour = FLAVOURS[section.model_flavour]
    parts = load_components(section, config, device)
    parts["validation_sampler"] = section.wan_validation_sampler
    parts["validation_guidance_2"] = section.wan_validation_guidance_2
    if note := single_stage_note(section.model_flavour, parts["experts"]):
        notice(note)
    vae = parts["vae"]
    transformer_config = parts["transformer"].config
    patch = tuple(int(p) for p in transformer_config.patch_size)
    return ModelBundle(
        family=FAMILY,
        denoiser=parts["transformer"],
        lora_target_modules=list(LORA_TARGETS),
        components=parts,
        temporal_compression=int(vae.config.scale_factor_temporal),
        spatial_multiple=int(vae.config.scale_factor_spatial) * int(parts["transformer"].config.patch_size[1]),
        frame_rate=FLAVOURS[section.model_flavour].fps,
        cache_id=parts["cache_id"],
        supports_token_routing=True,  # flow_matching_loss carries a router's plan out (tuner_wan.routing)
        rewritable_inputs=True,  # flow_matching_loss builds its input with tuner.train.noising.noisy_inputs
        base_model=section.pretrained_model_name_or_path or FLAVOURS[section.model_flavour].repo,
        block_lists=["blocks"],
        encoders={
            "text_encoder": "text",
            "vae": "latent",
            **({"image_encoder": "image"} if "image_encoder" in parts else {}),
        },
        image_conditioned=parts["conditioning"].image_conditioned,
        refused_precisions=dict(REFUSED_PRECISIONS),
        experts=parts["experts"],
        hidden_size=int(transformer_config.num_attention_heads * transformer_config.attention_head_dim),
        token_grid=lambda batch: _token_grid(batch["latents"].shape, patch),
        count_prompt_tokens=partial(count_tokens, parts["tokenizer"]),
        max_prompt_tokens=section.max_sequence_length,
        # The original names load in ComfyUI, and diffusers converts them on load (tuner_wan.export).
        auto_lora_format="comfyui",
        renders_previews=True,  # tuner_wan.sampling hands each step's denoised estimate to decode_preview
        flavour=section.model_flavour,
        architecture=flavour.architecture,
        implementation=f"https://github.com/Wan-Video/Wan{flavour.version}",
        pipeline_tag="image-to-video" if flavour.conditioned else "text-to-video",
        license="apache-2.0",  # every Wan 2.1 / 2.2 release's model card
    )


def _token_grid(latent_shape: tuple[int, ...], patch: tuple[int, ...]) -> tuple[int, int, int]:
    """The transformer's token grid for latents ``(B, C, F, H, W)``: patch_embedding(...).flatten(2) is frame-major."""
    return latent_shape[2] // patch[0], latent_shape[3] // patch[1], latent_shape[4] // patch[2]


@hookimpl
def encode_batch(bundle: ModelBundle, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    from tuner_wan.conditioning import encode_conditioning
    from tuner_wan.encode import encode_clips

    # The conditioning (I2V first-frame latents, CLIP embeddings) is stored in the clip's own entry.
    return [
        {**clip, **cond}
        for clip, cond in zip(encode_clips(bundle, pixels), encode_conditioning(bundle, pixels), strict=True)
    ]


@hookimpl
def encode_prompts(bundle: ModelBundle, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
    from tuner_wan.encode import encode_texts

    return encode_texts(bundle, prompts)


@hookimpl
def collate_prompts(bundle: ModelBundle, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    from tuner_wan.encode import collate_texts

    return collate_texts(bundle, items)


@hookimpl
def compute_loss(
    bundle: ModelBundle, batch: dict[str, torch.Tensor], generator: torch.Generator, config: RunConfig
) -> LossOutput:
    from tuner_wan.loss import flow_matching_loss

    return flow_matching_loss(bundle, batch, generator, config)


@hookimpl
def validate(bundle: ModelBundle, request: ValidationRequest) -> ValidationResult:
    from tuner_wan.validation import render_validation

    return render_validation(bundle, request)


@hookimpl
def eval_loss(
    bundle: ModelBundle, batch: dict[str, torch.Tensor], sigmas: torch.Tensor, generator: torch.Generator, config: RunConfig
) -> torch.Tensor:
    from tuner_wan.evaluation import velocity_errors

    return velocity_errors(bundle, batch, sigmas, generator)


@hookimpl
def export_adapter(
    bundle: ModelBundle, weights: AdapterWeights, path: Path, lora_format: str, metadata: dict[str, str]
) -> Path | None:
    from tuner_wan.export import save_adapter

    return save_adapter(weights, path, lora_format, metadata)


@hookimpl
def lora_naming() -> LoraNaming:
    from tuner_wan.export import lora_naming as naming

    return naming()


@hookimpl
def write_tiny_model(path: Path, seed: int, variant: str | None, real_width_blocks: int | None) -> dict[str, Any]:
    from tuner_wan.tiny import write_tiny_wan

    return write_tiny_wan(path, seed, variant, real_width_blocks)


@hookimpl
def describe_family() -> FamilyProfile:
    from tuner_wan.profile import wan_profile

    return wan_profile()

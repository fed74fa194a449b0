"""The Flux model family, as tuner hooks.

This module is the ``tuner.plugins`` entry point. It imports nothing heavy:
each hook imports what it needs when called. Flux needed no hook Wan did not
already use: images are one-frame samples (``ModelBundle.max_frames = 1``),
two text encoders are two entries of ``ModelBundle.encoders``, and the two
block kinds are two ``block_lists`` routed as one stack. Features that read a
block (CREPA) see the image tokens of the double-stream blocks as one frame
(``token_grid``, ``block_tokens``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner import hookimpl

from tuner_flux.settings import FLAVOURS, FluxSection

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig
    from tuner.family_profile import FamilyProfile
    from tuner.types.adapter import AdapterWeights
    from tuner.types.bundle import ModelBundle
    from tuner.types.training import LossOutput
    from tuner.types.validation import ValidationRequest, ValidationResult

FAMILY = "flux"
# Every linear layer of both block kinds (attention, both streams' feed-forward, the single blocks' fused
# MLP input and output) and the final projection: what kohya / ai-toolkit adapt by default.
LORA_TARGETS = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "proj_mlp",
    "proj_out",
]


@hookimpl
def register_config_sections(register: Any) -> None:
    register("flux", FluxSection)


@hookimpl
def register_model_families(register: Any) -> None:
    register(FAMILY, "FLUX.1 dev and schnell and Flux-derived checkpoints: text-to-image (diffusers layout)")


@hookimpl
def load_model(config: RunConfig, device: torch.device) -> ModelBundle:
    from tuner.types.bundle import ModelBundle

    from tuner_flux.loading import load_components

    section = config.section("flux")
    parts = load_components(section, config, device)
    transformer = parts["transformer"]
    width = int(transformer.config.num_attention_heads * transformer.config.attention_head_dim)
    return ModelBundle(
        family=FAMILY,
        denoiser=transformer,
        lora_target_modules=list(LORA_TARGETS),
        components=parts,
        temporal_compression=1,
        max_frames=1,  # an image model: clips give their first frame
        spatial_multiple=parts["vae_scale_factor"] * 2,  # latents are packed in 2x2 patches
        cache_id=parts["cache_id"],
        supports_token_routing=True,  # flow_matching_loss carries a router's plan out (tuner_flux.routing)
        rewritable_inputs=True,  # flow_matching_loss builds its input with tuner.train.noising.noisy_inputs
        base_model=section.flux_pretrained_model_name_or_path or FLAVOURS[section.flux_model_flavour][0],
        block_lists=["transformer_blocks", "single_transformer_blocks"],
        encoders={"text_encoder": "text", "text_encoder_2": "text", "vae": "latent"},
        # ComfyUI maps Flux's diffusers names itself, while diffusers' kohya reader (the comfyui layout) assumes
        # FLUX.1's full widths: the diffusers layout is the one that loads in both (tuner_flux.export).
        auto_lora_format="diffusers",
        renders_previews=True,  # tuner_flux.validation decodes each previewed step's denoised estimate
        hidden_size=width,
        token_grid=_token_grid,
        block_tokens=_image_tokens,
        flavour=section.flux_model_flavour,
        architecture=f"flux-1-{section.flux_model_flavour}",  # ModelSpec's id of FLUX.1 (kohya writes the same)
        implementation="https://github.com/black-forest-labs/flux",
        pipeline_tag="text-to-image",
        # FLUX.1 schnell is Apache-2.0; dev has its own non-commercial licence ("other" on the Hub).
        license="apache-2.0" if section.flux_model_flavour == "schnell" else "other",
    )


def _token_grid(batch: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """One frame of (H/2) x (W/2) tokens for latents ``(B, C, H, W)`` (`tuner_flux.loss.pack`: 2x2 patches, by rows)."""
    _, _, height, width = batch["latents"].shape
    return 1, height // 2, width // 2


def _image_tokens(output: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The image tokens of a double-stream block's ``(encoder_hidden_states, hidden_states)``: the second."""
    return output[1]


@hookimpl
def encode_batch(bundle: ModelBundle, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    from tuner_flux.encode import encode_images

    return encode_images(bundle, pixels)


@hookimpl
def encode_prompts(bundle: ModelBundle, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
    from tuner_flux.encode import encode_texts

    return encode_texts(bundle, prompts)


@hookimpl
def compute_loss(
    bundle: ModelBundle, batch: dict[str, torch.Tensor], generator: torch.Generator, config: RunConfig
) -> LossOutput:
    from tuner_flux.loss import flow_matching_loss

    return flow_matching_loss(bundle, batch, generator, config)


@hookimpl
def eval_loss(
    bundle: ModelBundle, batch: dict[str, torch.Tensor], sigmas: torch.Tensor, generator: torch.Generator, config: RunConfig
) -> torch.Tensor:
    from tuner_flux.loss import eval_errors

    return eval_errors(bundle, batch, sigmas, generator)


@hookimpl
def validate(bundle: ModelBundle, request: ValidationRequest) -> ValidationResult:
    from tuner_flux.validation import render_validation

    return render_validation(bundle, request)


@hookimpl
def export_adapter(
    bundle: ModelBundle, weights: AdapterWeights, path: Path, lora_format: str, metadata: dict[str, str]
) -> Path | None:
    from tuner_flux.export import save_adapter

    config = bundle.denoiser.config
    return save_adapter(weights, path, lora_format, config.num_attention_heads * config.attention_head_dim, metadata)


@hookimpl
def write_tiny_model(path: Path, seed: int, variant: str | None, real_width_blocks: int | None) -> dict[str, Any]:
    from tuner_flux.tiny import write_tiny_flux

    return write_tiny_flux(path, seed, variant, real_width_blocks)


@hookimpl
def describe_family() -> FamilyProfile:
    from tuner_flux.profile import flux_profile

    return flux_profile()

"""What Flux tells ``tuner configure``: its flavours, defaults and sizes (`describe_family`)."""

from __future__ import annotations

from typing import Any

from tuner.family_profile import ActivationCounts, FamilyProfile, FlavourProfile, ModelShape

from tuner_flux.settings import FLAVOURS

__all__ = ["TRANSFORMER", "flux_profile", "flux_shape"]

# FLUX.1's transformer config.json (dev has the guidance embedding, schnell not).
TRANSFORMER: dict[str, Any] = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, axes_dims_rope=[16, 56, 56],
)
# Bytes a block saves per token per hidden width under bf16 autocast with a float32 LoRA, measured on CPU with
# torch's saved-tensor hooks (tests/plugins/flux/test_flux_profile.py holds the estimate to them): a double
# block (each token in its own stream) ~48 bytes, a single block ~45, both with a 4x-wide MLP whose two
# feed-forward-width tensors (GELU input and output) count 16 of them.
_DOUBLE_HIDDEN, _SINGLE_HIDDEN = 16.0, 14.6
_T5_TOKENS = {"dev": 512, "schnell": 256}  # what FluxPipeline encodes a prompt to
# Layers that act on the timestep/pooled-text embedding once per sample, not per token.
_PER_SAMPLE = ("norm1.linear", "norm1_context.linear", "norm.linear")
# The text stream of a double block has the same sizes as the image stream: count one per token.
_OTHER_STREAM = ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out", "ff_context.")


def flux_shape(config: dict[str, Any]) -> ModelShape:
    """Count a Flux transformer's sizes from its config, built on the meta device (no memory, no download)."""
    import torch
    from diffusers import FluxTransformer2DModel

    from tuner_flux.plugin import LORA_TARGETS

    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(config)
    lora_io = macs = 0
    stacks = {"transformer_blocks": model.transformer_blocks, "single_transformer_blocks": model.single_transformer_blocks}
    for blocks in stacks.values():
        for name, module in blocks.named_modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            local = name.split(".", 1)[-1]
            if any(local == t or local.endswith("." + t) for t in LORA_TARGETS):
                lora_io += module.in_features + module.out_features
            if not local.startswith(_PER_SAMPLE + _OTHER_STREAM):
                macs += module.in_features * module.out_features
    doubles, singles = len(model.transformer_blocks), len(model.single_transformer_blocks)
    inner = int(model.config.num_attention_heads * model.config.attention_head_dim)
    hidden = (doubles * _DOUBLE_HIDDEN + singles * _SINGLE_HIDDEN) / max(doubles + singles, 1)
    return ModelShape(
        parameters=sum(p.numel() for p in model.parameters()),
        block_parameters=sum(p.numel() for s in stacks.values() for p in s.parameters()),
        blocks=doubles + singles,
        hidden_size=inner,
        ffn_size=4 * inner,
        lora_io=lora_io,
        linear_macs_per_token=macs,
        activations=ActivationCounts(
            hidden=hidden, hidden_fp32=0.0, ffn=2.0, per_rank=6.0, between_blocks_bytes=2.0, outside_bytes=3.5
        ),
    )


def flux_profile() -> FamilyProfile:
    """dev (the default) and schnell, with the validation each is sampled with."""
    validation = {
        "dev": {"validation.validation_num_inference_steps": 28, "validation.validation_guidance": 3.5},
        "schnell": {"validation.validation_num_inference_steps": 4, "validation.validation_guidance": 0.0},
    }
    flavours = [
        FlavourProfile(
            name=name,
            summary=f"FLUX.1 {name}: {summary}",
            settings={"flux.flux_model_flavour": name, "data.num_frames": 1},
            model_key="flux.flux_pretrained_model_name_or_path",
            model_source=repo,
            transformer_config={**TRANSFORMER, "guidance_embeds": name == "dev"},
            resolution=1024,
            frames=1,
            validation={**validation[name], "validation.validation_resolution": "1024x1024",
                        "validation.validation_num_video_frames": 1},
            pixels_per_token=16,  # 8x VAE, 2x2 packed patches
            joint_text_tokens=_T5_TOKENS[name],
        )
        for name, (repo, summary) in FLAVOURS.items()
    ]
    return FamilyProfile(flavours=flavours, frame_step=0, spatial_multiple=16, latent_frames=lambda frames: 1, shape=flux_shape)

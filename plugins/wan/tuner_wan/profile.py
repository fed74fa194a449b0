"""What Wan tells ``tuner configure``: its flavours, frame rule, defaults and sizes (`describe_family`)."""

from __future__ import annotations

from typing import Any

from tuner.family_profile import ActivationCounts, FamilyProfile, FlavourProfile, ModelShape

from tuner_wan.flavours import DEFAULT_FLAVOUR, FLAVOURS, Flavour

__all__ = ["TRANSFORMERS", "WAN_ACTIVATIONS", "transformer_config", "wan_profile", "wan_shape"]

_COMMON: dict[str, Any] = dict(
    patch_size=[1, 2, 2], attention_head_dim=128, text_dim=4096, freq_dim=256, qk_norm="rms_norm_across_heads",
    cross_attn_norm=True, eps=1e-6, rope_max_seq_len=1024, in_channels=16, out_channels=16,
)
_1_3B = {**_COMMON, "num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30}
_14B = {**_COMMON, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}
# The denoisers' config.json of the flavours' repositories: what the estimate sizes before any download.
TRANSFORMERS: dict[str, dict[str, Any]] = {
    "t2v-1.3b": _1_3B,
    "t2v-14b": _14B,
    "i2v-14b-2.1": {**_14B, "in_channels": 36, "image_dim": 1280, "added_kv_proj_dim": 5120},
    "flf2v-14b-2.1": {**_14B, "in_channels": 36, "image_dim": 1280, "added_kv_proj_dim": 5120, "pos_embed_seq_len": 514},
    "i2v-14b-2.2": {**_14B, "in_channels": 36},
    "ti2v-5b": {**_COMMON, "num_attention_heads": 24, "ffn_dim": 14336, "num_layers": 30, "in_channels": 48, "out_channels": 48},
}

# Measured on CPU under bf16 autocast with a float32 LoRA on LORA_TARGETS (tests/plugins/wan/test_wan_profile.py
# and, at the real widths, test_wan_true_width_estimate.py hold them to torch's saved-tensor hooks): per token
# and block, 13 hidden-width tensors in bf16 (norm outputs, q/k/v/o inputs and outputs, rotary q/k, attention
# outputs, gates), 5 in float32 (the float32 norms' inputs and the residual stream), 2 feed-forward-width ones
# (the GELU's input and output), rank-sized LoRA intermediates of the 8 adapted layers that see video tokens,
# and cross-attention keys/values per text token. (13.2 and 6, fitted on a 256-wide model where per-sample
# terms weigh more, over-stated a 14B block by 4%.)
# With checkpointing each block keeps its bf16 input (2 bytes) and the float32 final norm keeps the last
# block's output (4 bytes); measured at the real widths and depths 1-2 (tests/plugins/wan/test_wan_true_width_estimate.py).
WAN_ACTIVATIONS = ActivationCounts(
    hidden=13.0, hidden_fp32=5.0, ffn=2.0, per_rank=8.0, text=6.0,
    between_blocks_bytes=2.0, outside_bytes=1.0, checkpointed_outside_bytes=4.0,
)  # fmt: skip
_CLIP_TOKENS = 257  # CLIP ViT-H/14 at 224 px: 256 patches + the class token
# Linear layers that read the text (or image) tokens, not the video tokens: they do not scale with the clip.
_CONTEXT_LAYERS = ("attn2.to_k", "attn2.to_v", "attn2.add_k_proj", "attn2.add_v_proj")


def transformer_config(flavour: Flavour) -> dict[str, Any]:
    """The published ``config.json`` of ``flavour``'s denoiser (each expert of an A14B pair has the same)."""
    if flavour.task == "ti2v":
        return TRANSFORMERS["ti2v-5b"]
    if flavour.version == "2.2":
        return TRANSFORMERS["i2v-14b-2.2"] if flavour.conditioned else TRANSFORMERS["t2v-14b"]
    if flavour.task == "flf2v":
        return TRANSFORMERS["flf2v-14b-2.1"]
    if flavour.conditioned:
        return TRANSFORMERS["i2v-14b-2.1"]
    return TRANSFORMERS["t2v-1.3b"] if "1.3b" in flavour.repo.lower() else TRANSFORMERS["t2v-14b"]


def wan_shape(config: dict[str, Any]) -> ModelShape:
    """Count a Wan transformer's sizes from its config, built on the meta device (no memory, no download)."""
    import torch
    from diffusers import WanTransformer3DModel

    from tuner_wan.plugin import LORA_TARGETS

    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(config)
    lora_io = macs = 0
    for name, module in model.blocks.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if any(name == t or name.endswith("." + t) for t in LORA_TARGETS):
            lora_io += module.in_features + module.out_features
        if not name.split(".", 1)[-1].startswith(_CONTEXT_LAYERS):
            macs += module.in_features * module.out_features
    inner = int(model.config.num_attention_heads * model.config.attention_head_dim)
    return ModelShape(
        parameters=sum(p.numel() for p in model.parameters()),
        block_parameters=sum(p.numel() for p in model.blocks.parameters()),
        blocks=len(model.blocks),
        hidden_size=inner,
        ffn_size=int(model.config.ffn_dim),
        lora_io=lora_io,
        linear_macs_per_token=macs,
        activations=WAN_ACTIVATIONS,
    )


def wan_profile() -> FamilyProfile:
    """Every flavour (the default first) with the settings that select it and validation that suits it."""
    names = [DEFAULT_FLAVOUR, *(n for n in FLAVOURS if n != DEFAULT_FLAVOUR)]
    flavours = []
    for name in names:
        spec = FLAVOURS[name]
        config = transformer_config(spec)
        flavours.append(
            FlavourProfile(
                name=name,
                summary=spec.summary,
                settings={"wan.model_flavour": name},
                model_key="wan.pretrained_model_name_or_path",
                model_source=spec.repo,
                transformer_config=config,
                resolution=480,
                frames=81 if "14b" in name else 49,
                needs_first_frame=spec.conditioned or spec.task == "ti2v",
                validation={
                    "validation.validation_num_inference_steps": 30,
                    "validation.validation_guidance": 5.0,
                    "validation.validation_resolution": "832x480",
                },
                # The VAE compresses 8x (TI2V's 16x) and the transformer patches 2x2.
                pixels_per_token=32 if spec.task == "ti2v" else 16,
                frame_rate=spec.fps,
                # Wan 2.1 image-to-video also cross-attends to the CLIP image tokens (257, two images for FLF2V).
                cross_text_tokens=512 + (_CLIP_TOKENS * (2 if spec.task == "flf2v" else 1) if "image_dim" in config else 0),
            )
        )
    return FamilyProfile(
        flavours=flavours,
        frame_step=4,
        spatial_multiple=32,  # TI2V's 32; the others need 16, and 32 suits them too
        latent_frames=lambda frames: (frames - 1) // 4 + 1,
        shape=wan_shape,
    )

"""Tiny, randomly initialised Wan models in the real diffusers folder layout, one per flavour shape.

Everything is built here (the tokenizer with `tuner.testing.tiny`), so demos and tests run with no
download while exercising the same ``from_pretrained`` code as the real model.
The shapes follow the real repositories: image-to-video transformers take 36
input channels (16 noisy + 4 mask + 16 conditioning), Wan 2.1 I2V adds a CLIP
image encoder, the A14B pairs hold ``transformer`` + ``transformer_2`` with
``boundary_ratio`` in ``model_index.json``, and TI2V 5B has a 48-channel VAE
that compresses 16x spatially with ``expand_timesteps``.

With ``real_width_blocks`` the transformers take the flavour's published
config (``tuner_wan.profile.TRANSFORMERS``: dim 1536, 3072 or 5120, its
feed-forward width, heads, ``text_dim`` 4096, ``image_dim`` 1280) with only
that many blocks; the text and image encoders stay two tiny layers inside but
output those widths, and the VAE stays tiny (it is not what such a model tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuner.errors import ConfigError, did_you_mean
from tuner.testing.tiny import random_model, tiny_t5_config, write_t5_tokenizer

from tuner_wan.flavours import DEFAULT_FLAVOUR, FLAVOURS, Flavour

__all__ = ["TINY_TRANSFORMER", "TINY_BOUNDARY_RATIOS", "write_tiny_wan"]

TINY_TRANSFORMER: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=64,
)
TINY_MAX_SEQUENCE_LENGTH = 32
TINY_IMAGE_DIM = 32  # the CLIP vision hidden size = the transformer's image_dim
# The real repositories' boundaries: I2V A14B switches at t = 900, T2V A14B at t = 875.
TINY_BOUNDARY_RATIOS = {"i2v": 0.9, "t2v": 0.875}

def _transformer_shape(flavour: Flavour, real_width_blocks: int | None) -> dict[str, Any]:
    if real_width_blocks is not None:
        from tuner_wan.profile import transformer_config

        shape = {**transformer_config(flavour), "num_layers": real_width_blocks}
        if flavour.task == "flf2v":  # the tiny CLIP's tokens of the two frames, not ViT-H's 257 each
            shape.update(pos_embed_seq_len=2 * _CLIP_TOKENS)
        return shape
    shape = dict(TINY_TRANSFORMER)
    if flavour.task == "ti2v":
        shape.update(in_channels=48, out_channels=48)
    elif flavour.conditioned:
        shape.update(in_channels=36)  # noisy latents + 4-channel frame mask + conditioning latents
        if flavour.version == "2.1":
            inner = shape["num_attention_heads"] * shape["attention_head_dim"]
            shape.update(image_dim=TINY_IMAGE_DIM, added_kv_proj_dim=inner)
            if flavour.task == "flf2v":
                shape.update(pos_embed_seq_len=2 * _CLIP_TOKENS)
    return shape


def _transformer(shape: dict[str, Any], real_width: bool, seed: int) -> Any:
    from diffusers import WanTransformer3DModel

    if real_width:
        import torch

        # Stored in bf16, as the published weights are used; the loader keeps its float32 modules float32.
        return random_model(lambda: WanTransformer3DModel(**shape), seed, torch.bfloat16)
    return WanTransformer3DModel(**shape)


def _vae(flavour: Flavour) -> Any:
    from diffusers import AutoencoderKLWan

    if flavour.task == "ti2v":
        # Wan 2.2's VAE: 2x2 pixel patches in, 48 latent channels, 16x spatial compression.
        return AutoencoderKLWan(
            base_dim=4,
            z_dim=48,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
            is_residual=True,
            in_channels=12,
            out_channels=12,
            patch_size=2,
            scale_factor_spatial=16,
            latents_mean=[0.0] * 48,
            latents_std=[1.0] * 48,
        )
    return AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )


_CLIP_TOKENS = 5  # 4 patches of a 32x32 image + the class token


def _image_encoder(width: int) -> tuple[Any, Any]:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=width,  # what the transformer's image embedder reads (image_dim)
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
            projection_dim=width,
        )
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return encoder, processor


def write_tiny_wan(
    path: Path, seed: int = 0, flavour: str | None = None, real_width_blocks: int | None = None
) -> dict[str, Any]:
    """Write ``model_index.json`` + transformer/, vae/, text_encoder/, tokenizer/, scheduler/ to ``path``.

    ``flavour`` (a ``model_flavour``) picks the shape; its extra parts come too:
    ``transformer_2`` for the A14B pairs, ``image_encoder``/``image_processor``
    for Wan 2.1 image-to-video. ``real_width_blocks``: the real widths, that many blocks.
    """
    import torch
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    name = flavour or DEFAULT_FLAVOUR
    if name not in FLAVOURS:
        raise ConfigError(f"unknown Wan flavour '{name}'{did_you_mean(name, FLAVOURS)}")
    spec = FLAVOURS[name]
    path.mkdir(parents=True, exist_ok=True)
    write_t5_tokenizer(path / "tokenizer", TINY_MAX_SEQUENCE_LENGTH)
    tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"))
    torch.manual_seed(seed)
    shape = _transformer_shape(spec, real_width_blocks)
    wide = real_width_blocks is not None
    transformer = _transformer(shape, wide, seed)
    transformer_2 = _transformer(shape, wide, seed + 1) if spec.two_experts else None
    vae = _vae(spec)
    text_encoder = UMT5EncoderModel(tiny_t5_config(UMT5Config, tokenizer, d_model=shape["text_dim"]))
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
    )
    parts: dict[str, Any] = dict(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )
    if spec.two_experts:
        parts.update(transformer_2=transformer_2, boundary_ratio=TINY_BOUNDARY_RATIOS[spec.task])
    if spec.task == "ti2v":
        parts.update(expand_timesteps=True)
    if spec.conditioned:
        if spec.version == "2.1":
            parts["image_encoder"], parts["image_processor"] = _image_encoder(shape["image_dim"])
        pipe = WanImageToVideoPipeline(**parts)
    else:
        pipe = WanPipeline(**parts)
    pipe.save_pretrained(str(path))
    overrides: dict[str, Any] = {
        "wan.pretrained_model_name_or_path": str(path),
        "wan.max_sequence_length": TINY_MAX_SEQUENCE_LENGTH,
    }
    if flavour is not None:
        overrides["wan.model_flavour"] = name
    if spec.conditioned or spec.task == "ti2v":
        # Image-to-video validation starts from a first frame: give the demo one of the kind it trains on.
        overrides["validation.validation_image"] = str(_first_frame(path / "first-frame.png"))
    return overrides


def _first_frame(path: Path) -> Path:
    from PIL import Image

    from tuner.data.synthetic import render_clip

    Image.fromarray(render_clip("square", "red", "black", "right", 1, 64, 64)[0]).save(path)
    return path

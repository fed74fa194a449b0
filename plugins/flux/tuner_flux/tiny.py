"""Tiny, randomly initialised Flux models in the real diffusers folder layout.

Everything is built here (both tokenizers with `tuner.testing.tiny`), so demos and
tests run with no download while exercising the same ``from_pretrained`` code
as the real model: transformer/, vae/ (an 8x ``AutoencoderKL`` with Flux's
shift and scaling factors, no quant convs), text_encoder/ + tokenizer/ (CLIP),
text_encoder_2/ + tokenizer_2/ (T5) and scheduler/. ``dev`` has a guidance
embedding and dynamic shifting; ``schnell`` has neither.

With ``real_width_blocks`` the transformer takes FLUX.1's published config
(``tuner_flux.profile.TRANSFORMER``: 24 heads of 128, T5 width 4096, CLIP
width 768, 64 input channels) with that many double and single blocks; the
encoders stay two tiny layers inside but output those widths, and the VAE
stays tiny with Flux's 16 latent channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuner.errors import ConfigError, did_you_mean
from tuner.testing.tiny import random_model, tiny_t5_config, write_clip_tokenizer, write_t5_tokenizer

from tuner_flux.settings import FLAVOURS

__all__ = ["TINY_TRANSFORMER", "write_tiny_flux"]

TINY_TRANSFORMER: dict[str, Any] = dict(
    patch_size=1,
    in_channels=16,  # 4 latent channels x a 2x2 patch
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
)
TINY_T5_LENGTH = 32
_CLIP_LENGTH = 77


def _vae(latent_channels: int) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 8, 8, 8],
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def _text_encoders(path: Path, clip_width: int, t5_width: int) -> tuple[Any, Any, Any, Any]:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

    write_clip_tokenizer(path / "tokenizer", _CLIP_LENGTH)
    write_t5_tokenizer(path / "tokenizer_2", TINY_T5_LENGTH)
    clip_tok = CLIPTokenizer.from_pretrained(str(path / "tokenizer"))
    t5_tok = T5TokenizerFast.from_pretrained(str(path / "tokenizer_2"))
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tok),
            hidden_size=clip_width,  # the pooled output the transformer reads (pooled_projection_dim)
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=_CLIP_LENGTH,
            projection_dim=clip_width,
            bos_token_id=clip_tok.bos_token_id,
            eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id,
        )
    )
    t5 = T5EncoderModel(tiny_t5_config(T5Config, t5_tok, d_model=t5_width))
    return clip, clip_tok, t5, t5_tok


def write_tiny_flux(
    path: Path, seed: int = 0, variant: str | None = None, real_width_blocks: int | None = None
) -> dict[str, Any]:
    """Write ``model_index.json`` and every component folder of a tiny ``variant`` (dev or schnell) to ``path``.

    ``real_width_blocks``: the real widths, that many double and that many single blocks.
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    name = variant or "dev"
    if name not in FLAVOURS:
        raise ConfigError(f"unknown Flux flavour '{name}'{did_you_mean(name, FLAVOURS)}; known: {', '.join(FLAVOURS)}")
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if real_width_blocks is None:
        shape = dict(TINY_TRANSFORMER, guidance_embeds=name == "dev")
    else:
        from tuner_flux.profile import TRANSFORMER

        blocks = dict(num_layers=real_width_blocks, num_single_layers=real_width_blocks)
        shape = dict(TRANSFORMER, **blocks, guidance_embeds=name == "dev")
    # The encoders draw from the seeded global generator first, the transformer after them: the
    # order every tiny Flux was written in, so the tiny model's weights (and the tests' thresholds
    # tuned on them) stay what they were.
    clip, clip_tok, t5, t5_tok = _text_encoders(path, shape["pooled_projection_dim"], shape["joint_attention_dim"])
    if real_width_blocks is None:
        transformer = FluxTransformer2DModel(**shape)
    else:
        transformer = random_model(lambda: FluxTransformer2DModel(**shape), seed, torch.bfloat16)
    dev = name == "dev"
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0 if dev else 1.0,
        use_dynamic_shifting=dev,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=_vae(shape["in_channels"] // 4),  # a 2x2 patch of latents per token
        text_encoder=clip,
        tokenizer=clip_tok,
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=transformer,
    )
    pipe.save_pretrained(str(path))
    overrides: dict[str, Any] = {
        "flux.flux_pretrained_model_name_or_path": str(path),
        "flux.flux_t5_max_length": TINY_T5_LENGTH,
        # An image family: the demo and the fixtures write stills (see the write_tiny_model hook).
        "data.num_frames": 1,
        "validation.validation_num_video_frames": 1,
    }
    if variant is not None:
        overrides["flux.flux_model_flavour"] = name
    return overrides

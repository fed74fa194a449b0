"""A tiny random LTX-Video in the real diffusers layout, for tests and ``tuner demo``.

Real proportions at toy width: the VAE compresses 32x in space (4x4 pixel
patches, three 2x downsamplings) and 8x in time, into 16 latent channels (the
real model: 128); the transformer has 4 blocks of width 32 (real: 28 of 2048).
Everything, the tokenizer too, is built here: no download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuner.errors import ConfigError
from tuner.testing.tiny import tiny_t5_config, write_t5_tokenizer

TINY_MAX_SEQUENCE_LENGTH = 32


def write_tiny_ltx(path: Path, seed: int = 0, variant: str | None = None) -> dict[str, Any]:
    """Write ``model_index.json`` + transformer/, vae/, text_encoder/, tokenizer/, scheduler/ to ``path``."""
    import torch
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    if variant is not None:
        raise ConfigError(f"the ltx family has one tiny model shape; drop the variant '{variant}'")
    path.mkdir(parents=True, exist_ok=True)
    write_t5_tokenizer(path / "tokenizer", TINY_MAX_SEQUENCE_LENGTH)
    tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"))
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(tiny_t5_config(T5Config, tokenizer, d_model=32))
    vae = AutoencoderKLLTXVideo(
        latent_channels=16,
        block_out_channels=(8, 16, 16, 16),
        decoder_block_out_channels=(8, 16, 16, 16),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4,
    )
    transformer = LTXVideoTransformer3DModel(
        in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
        num_layers=4, caption_channels=32,
    )
    # LTX-Video's scheduler config: the shift grows with the token count (use_dynamic_shifting).
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024, max_image_seq_len=4096
    )
    pipe = LTXPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)
    pipe.save_pretrained(str(path))
    return {"ltx.ltx_model_path": str(path), "ltx.ltx_max_sequence_length": TINY_MAX_SEQUENCE_LENGTH}

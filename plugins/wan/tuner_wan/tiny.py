"""A tiny, randomly initialised Wan 2.1 in the real diffusers folder layout.

Everything is built here (the tokenizer too), so demos and tests run with no
download while exercising the same ``from_pretrained`` code as the real model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["TINY_TRANSFORMER", "write_tiny_wan"]

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

_CORPUS = (
    "a red green blue yellow black white grey square circle triangle moving left right up down on the "
    "background video of with and slowly quickly bouncing spinning cat dog person walking running camera "
    "scene bright dark light sky water tree city street night day close up wide shot"
)


def _tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=256, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    words = _CORPUS.split()
    tok.train_from_iterator([" ".join(words[i:] + words[:i]) for i in range(len(words))], trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    fast = T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)
    fast.model_max_length = TINY_MAX_SEQUENCE_LENGTH
    fast.save_pretrained(str(folder))


def write_tiny_wan(path: Path, seed: int = 0) -> dict[str, Any]:
    """Write ``model_index.json`` + transformer/, vae/, text_encoder/, tokenizer/, scheduler/ to ``path``."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    path.mkdir(parents=True, exist_ok=True)
    _tokenizer(path / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"))
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(**TINY_TRANSFORMER)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
    )
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )
    pipe.save_pretrained(str(path))
    return {
        "wan.pretrained_model_name_or_path": str(path),
        "wan.max_sequence_length": TINY_MAX_SEQUENCE_LENGTH,
    }

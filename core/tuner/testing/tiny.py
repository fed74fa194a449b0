"""Parts for a family's tiny random model (`write_tiny_model`), built locally.

Tiny models exercise a family's real ``from_pretrained`` code in tests and in
``tuner demo`` with no download. Weights are easy (a diffusers or transformers
class with a small config); a tokenizer is not, since the real vocabularies are
large downloads. `write_t5_tokenizer` and `write_clip_tokenizer` build small
ones here from one word list (``CORPUS``: the words of the synthetic captions
and common validation prompts; other words still tokenize, in pieces), so every
family whose text encoder is T5 (Wan's UMT5, LTX-Video, Flux) or CLIP (Flux)
can write one that loads exactly as the real one does.

`random_model` builds a model at its *real* layer widths (a few blocks of
them) in seconds: torch's default initialisation draws every weight one by
one, which takes ~15 s for one 14B-width Wan block on two cores; here the
weights are slices of one shared random pool, scaled as the default
initialisation scales them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["CORPUS", "write_t5_tokenizer", "write_clip_tokenizer", "tiny_t5_config", "random_model"]

CORPUS = (
    "a red green blue yellow black white grey square circle triangle moving left right up down on the "
    "background video of with and slowly quickly bouncing spinning cat dog person walking running camera "
    "scene bright dark light sky water tree city street night day close up wide shot still photo image"
)


def _sentences(corpus: str) -> list[str]:
    words = corpus.split()
    return [" ".join(words[i:] + words[:i]) for i in range(len(words))]


def write_t5_tokenizer(folder: Path, max_length: int, corpus: str = CORPUS, vocab_size: int = 256) -> None:
    """A T5-style (SentencePiece unigram) ``T5TokenizerFast`` with ``<pad>``, ``</s>``, ``<unk>``; ends with ``</s>``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(_sentences(corpus), trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    fast = T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)
    fast.model_max_length = max_length
    fast.save_pretrained(str(folder))


def write_clip_tokenizer(folder: Path, max_length: int, corpus: str = CORPUS) -> None:
    """A CLIP-style byte-level BPE ``CLIPTokenizer``: every printable ASCII character, plus one merge chain per word.

    CLIP marks a word's last piece with ``</w>`` and wraps a prompt in
    ``<|startoftext|>`` ... ``<|endoftext|>`` (which also pads), as the real one does.
    """
    from transformers import CLIPTokenizer

    chars = [chr(c) for c in range(33, 127)]
    vocab: dict[str, int] = {}
    for piece in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(piece, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in sorted(set(corpus.split())):
        # Merge left to right: "r e d</w>" -> "re d</w>" -> "red</w>".
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            rule = (pieces[0], pieces[1])
            if rule not in merges:
                merges.append(rule)
            vocab.setdefault(merged, len(vocab))
            pieces = [merged] + pieces[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(str(folder))


def tiny_t5_config(config_class: type, tokenizer: object, d_model: int = 32) -> object:
    """A 2-layer config of a T5-family encoder (``T5Config``, ``UMT5Config``) sized to ``tokenizer``.

    ``d_model`` is the width of its output (what the denoiser's text projection
    reads: 4096 for the real UMT5-XXL and T5-XXL); everything inside stays tiny.
    """
    return config_class(
        vocab_size=len(tokenizer),  # type: ignore[arg-type]
        d_model=d_model,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
        eos_token_id=tokenizer.eos_token_id,  # type: ignore[attr-defined]
    )


_POOL = 1_000_003  # a prime: rows of any width start at different places of the pool


def random_model(build: Callable[[], Any], seed: int, dtype: Any) -> Any:
    """``build()`` run with its parameters on the meta device, then filled with random values in ``dtype``.

    Matrices (and convolution kernels) get normal values scaled by ``1/sqrt(fan_in)``, the
    spread of torch's default initialisation; 1-D ``weight``s (norms) get 1, ``bias``es 0, and
    any other parameter (Wan's modulation tables) small normal values. Buffers are built for
    real (rotary tables), so the model runs as one built normally does.
    """
    import torch
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = build()
    pool = torch.randn(_POOL, generator=torch.Generator().manual_seed(seed)).to(dtype)
    offset = 0
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None or param.device.type != "meta":
                continue
            value = torch.empty(param.shape, dtype=dtype)
            if param.ndim == 1 and name == "weight":
                value.fill_(1.0)
            elif param.ndim == 1 and name == "bias":
                value.zero_()
            else:
                offset = _fill_from_pool(value.view(-1), pool, offset)
                fan_in = value.numel() // value.shape[0]
                value.mul_(fan_in**-0.5 if name == "weight" and param.ndim >= 2 else 0.02)
            module._parameters[name] = torch.nn.Parameter(value, requires_grad=param.requires_grad)
    return model


def _fill_from_pool(flat: Any, pool: Any, offset: int) -> int:
    """Copy the pool into ``flat`` cyclically from ``offset``; return where the next tensor starts."""
    n, size = flat.numel(), pool.numel()
    head = min(size - offset, n)
    flat[:head].copy_(pool[offset : offset + head])
    whole = (n - head) // size
    if whole:  # one copy for all the full turns of the pool
        flat[head : head + whole * size].view(whole, size).copy_(pool.expand(whole, size))
    rest = n - head - whole * size
    flat[n - rest :].copy_(pool[:rest])
    return (offset + n + 7919) % size

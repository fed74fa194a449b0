"""Parts for a family's tiny random model (`write_tiny_model`), built locally.

Tiny models exercise a family's real ``from_pretrained`` code in tests and in
``tuner demo`` with no download. Weights are easy (a diffusers or transformers
class with a small config); a tokenizer is not, since the real vocabularies are
large downloads. `write_t5_tokenizer` trains a small T5-style tokenizer here,
so every family whose text encoder is T5 (Wan's UMT5, LTX-Video, Flux) can
write one.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["TINY_CORPUS", "write_t5_tokenizer"]

# The words of the synthetic clips' captions and the demo's prompts, and a few more.
TINY_CORPUS = (
    "a red green blue yellow black white grey square circle triangle moving left right up down on the "
    "background video of with and slowly quickly bouncing spinning cat dog person walking running camera "
    "scene bright dark light sky water tree city street night day close up wide shot"
)


def write_t5_tokenizer(folder: Path, max_length: int, vocab_size: int = 256) -> None:
    """Save a ``T5TokenizerFast`` (Unigram, ``<pad>`` / ``</s>`` / ``<unk>``, an ``</s>`` after each text) to ``folder``.

    Loads with ``AutoTokenizer.from_pretrained(folder)`` like a real T5
    tokenizer; ``model_max_length`` is ``max_length``. Size the text encoder's
    vocabulary with ``len(tokenizer)``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    words = TINY_CORPUS.split()
    tok.train_from_iterator([" ".join(words[i:] + words[:i]) for i in range(len(words))], trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    fast = T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)
    fast.model_max_length = max_length
    fast.save_pretrained(str(folder))

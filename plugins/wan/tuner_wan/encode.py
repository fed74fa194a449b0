"""Clips to normalised latents, prompts to UMT5 embeddings, as WanPipeline does them."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from tuner.types.bundle import ModelBundle

__all__ = ["encode_clips", "encode_texts", "collate_texts", "count_tokens", "latent_stats"]


def latent_stats(vae: object, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's per-channel latent mean and std, shaped to broadcast over ``(B, C, F, H, W)``."""
    import torch

    cfg = vae.config  # type: ignore[attr-defined]
    shape = (1, cfg.z_dim, 1, 1, 1)
    mean = torch.tensor(cfg.latents_mean, device=like.device, dtype=like.dtype).view(shape)
    std = torch.tensor(cfg.latents_std, device=like.device, dtype=like.dtype).view(shape)
    return mean, std


def encode_clips(bundle: ModelBundle, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """``(B, F, C, H, W)`` pixels in [-1, 1] -> per-clip ``{"latents": (C, F', H', W')}``, normalised."""
    vae = bundle.components["vae"]
    # The pixels are where the work runs; the VAE may sit in CPU memory between uses.
    video = pixels.permute(0, 2, 1, 3, 4).to(dtype=vae.dtype)
    # The distribution's mean: deterministic, so a cache entry never depends on luck.
    latents = vae.encode(video).latent_dist.mode()
    mean, std = latent_stats(vae, latents)
    latents = ((latents - mean) / std).float().cpu()
    return [{"latents": latent} for latent in latents]


def encode_texts(bundle: ModelBundle, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
    """Per-prompt ``{"prompt_embeds": (tokens, dim)}``, without the zero padding."""
    pipe = bundle.components["pipeline"]
    max_len = bundle.components["max_sequence_length"]
    tokens = pipe.tokenizer(
        prompts, padding="max_length", max_length=max_len, truncation=True, add_special_tokens=True, return_tensors="pt"
    )
    lengths = tokens.attention_mask.sum(dim=1).tolist()
    embeds, _ = pipe.encode_prompt(
        prompts,
        do_classifier_free_guidance=False,
        max_sequence_length=max_len,
        device=pipe._execution_device,  # where the work runs: the encoder may sit in CPU memory between uses
    )
    return [{"prompt_embeds": e[: max(1, n)].cpu()} for e, n in zip(embeds, lengths)]


def count_tokens(tokenizer: object, prompts: list[str]) -> list[int]:
    """Tokens of each prompt as `encode_texts` tokenizes it, before the cut at ``max_sequence_length``."""
    tokens = tokenizer(prompts, add_special_tokens=True, truncation=False, verbose=False)  # type: ignore[operator]
    ids = tokens["input_ids"]
    return [len(i) for i in ids]


def collate_texts(bundle: ModelBundle, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Zero-pad to ``max_sequence_length``, exactly as WanPipeline feeds the transformer at inference."""
    import torch

    max_len = bundle.components["max_sequence_length"]
    dim = items[0]["prompt_embeds"].shape[-1]
    out = torch.zeros(len(items), max_len, dim, dtype=items[0]["prompt_embeds"].dtype)
    for i, item in enumerate(items):
        e = item["prompt_embeds"][:max_len]
        out[i, : e.shape[0]] = e
    return {"prompt_embeds": out}

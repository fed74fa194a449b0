"""ComfyUI's rules for a Wan LoRA file, restated in our own words for the tests.

Read from ComfyUI's comfy/lora.py (``model_lora_keys_unet``, ``load_lora``) and
comfy/weight_adapter/ (lora.py, lokr.py, loha.py):

* Key names. For a Wan model ComfyUI has no family-specific rule: it maps
  ``diffusion_model.<w>`` (and ``lora_unet_<w with dots as underscores>``) onto
  each weight ``diffusion_model.<w>.weight`` of its Wan model, whose names are
  the original Wan checkpoint's (``blocks.N.self_attn.q``, ``ffn.0``,
  ``head.head``, ...). diffusers' names (``transformer.blocks.N.attn1.to_q``)
  match no rule and load nothing.
* A mapped prefix ``x`` is read by the first adapter whose tensors it has:
  LoRA (``x.lora_up.weight`` + ``x.lora_down.weight`` or ``x.lora_B.weight`` +
  ``x.lora_A.weight``, optional ``x.lora_mid.weight``), LoHa (``x.hada_w1_a``,
  ...), LoKr (``x.lokr_w1`` or ``x.lokr_w1_a``/``_b``, ``x.lokr_w2`` or
  ``x.lokr_w2_a``/``_b``, ``x.lokr_t2``), GLoRA, or a plain diff; ``x.alpha``
  and ``x.dora_scale`` go with any of them. Every other key is logged as "lora
  key not loaded".
* Scale. LoRA: ``alpha / rank`` (rank = rows of the down) when ``x.alpha`` is
  there, else 1. LoKr: ``alpha / dim`` where dim is the rank of a decomposed
  factor (``lokr_w2_b`` rows, else ``lokr_w1_b`` rows); with both factors full
  there is no dim and the scale is 1 (the bypass path divides the alpha by
  itself then, and uses 1 without an alpha).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["comfyui_wan_weights", "comfyui_unloaded", "comfyui_deltas", "LOADED_SUFFIXES"]

_LORA_PAIRS = (("lora_up.weight", "lora_down.weight"), ("lora_B.weight", "lora_A.weight"))
_SINGLE = (
    "alpha", "dora_scale", "lora_mid.weight",
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
    "a1.weight", "a2.weight", "b1.weight", "b2.weight", "diff", "diff_b", "set_weight", "w_norm", "b_norm",
)  # fmt: skip
LOADED_SUFFIXES = tuple(s for pair in _LORA_PAIRS for s in pair) + _SINGLE


def comfyui_wan_weights(config: dict[str, Any]) -> set[str]:
    """Module names (no ``diffusion_model.`` nor ``.weight``) of ComfyUI's Wan model for a diffusers transformer config.

    The original Wan model's layout: patch and condition embeddings, blocks of
    self-attention, cross-attention (with image keys for 2.1 I2V), the
    cross-attention norm ``norm3`` and the feed-forward ``ffn.0``/``ffn.2``, then
    the head; the image embedder ``img_emb.proj`` for 2.1 I2V.
    """
    names = {"patch_embedding", "text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2"}
    names |= {"time_projection.1", "head.head"}
    image = config.get("image_dim") is not None
    for i in range(config["num_layers"]):
        block = f"blocks.{i}."
        for attn in ("self_attn", "cross_attn"):
            names |= {f"{block}{attn}.{p}" for p in ("q", "k", "v", "o")}
            if config.get("qk_norm"):
                names |= {f"{block}{attn}.norm_q", f"{block}{attn}.norm_k"}
        names |= {f"{block}ffn.0", f"{block}ffn.2"}
        if config.get("cross_attn_norm"):
            names.add(f"{block}norm3")
        if config.get("added_kv_proj_dim") is not None:
            names |= {f"{block}cross_attn.k_img", f"{block}cross_attn.v_img"}
            if config.get("qk_norm"):
                names.add(f"{block}cross_attn.norm_k_img")
    if image:
        names |= {"img_emb.proj.0", "img_emb.proj.1", "img_emb.proj.3", "img_emb.proj.4"}
    return names


def _mapped_prefixes(weights: set[str]) -> set[str]:
    return {f"diffusion_model.{w}" for w in weights} | {"lora_unet_" + w.replace(".", "_") for w in weights}


def _split(key: str) -> tuple[str, str] | None:
    for suffix in LOADED_SUFFIXES:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], suffix
    return None


def comfyui_unloaded(keys: set[str], weights: set[str]) -> list[str]:
    """The keys ComfyUI would leave unloaded ("lora key not loaded") from a file with ``keys`` on a Wan model."""
    prefixes = _mapped_prefixes(weights)
    out = []
    for key in sorted(keys):
        split = _split(key)
        if split is None or split[0] not in prefixes:
            out.append(key)
            continue
        prefix, suffix = split
        for pair in _LORA_PAIRS:  # a LoRA half without its other half is not read
            if suffix in pair and not all(f"{prefix}.{s}" in keys for s in pair):
                out.append(key)
    return out


def comfyui_deltas(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``prefix -> delta`` ComfyUI adds to the weight (flattened to 2-D), for the LoRA and LoKr modules of ``sd``."""
    prefixes = {split[0] for k in sd if (split := _split(k)) is not None}
    out = {}
    for x in prefixes:
        alpha = sd[f"{x}.alpha"].item() if f"{x}.alpha" in sd else None
        t = {k[len(x) + 1 :]: v.float() for k, v in sd.items() if k.startswith(x + ".")}
        up = t.get("lora_up.weight", t.get("lora_B.weight"))
        if up is not None:
            down = t.get("lora_down.weight", t.get("lora_A.weight"))
            scale = alpha / down.shape[0] if alpha is not None else 1.0
            out[x] = scale * (up.flatten(1) @ down.flatten(1))
        elif any(k.startswith("lokr_") for k in t):
            dim = None
            w1 = t.get("lokr_w1")
            if w1 is None:
                dim = t["lokr_w1_b"].shape[0]
                w1 = t["lokr_w1_a"] @ t["lokr_w1_b"]
            w2 = t.get("lokr_w2")
            if w2 is None:
                dim = t["lokr_w2_b"].shape[0]
                w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
            scale = alpha / dim if alpha is not None and dim is not None else 1.0
            out[x] = scale * torch.kron(w1, w2)
        elif "hada_w1_a" in t:
            scale = alpha / t["hada_w1_b"].shape[0] if alpha is not None else 1.0
            out[x] = scale * (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
    return out

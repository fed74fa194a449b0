"""Writing trained adapters in the layouts Wan's tools read.

* ``comfyui``, what ``lora_format = "auto"`` (the default) writes for Wan: the
  original Wan names, ``diffusion_model.blocks.N.self_attn.q`` with
  ``.lora_A.weight`` / ``.lora_B.weight`` / ``.alpha`` for LoRA and the LyCORIS
  tensors (``.lokr_w1``, ...) for LyCORIS. ComfyUI maps ``diffusion_model.<x>``
  onto its Wan model's weight ``<x>.weight`` (``model_lora_keys_unet`` in
  comfy/lora.py; it has no rule for the diffusers names), with scale
  alpha / rank. diffusers' Wan loader converts the LoRA ones on load
  (``_convert_non_diffusers_wan_lora_to_diffusers``), applying ``.alpha`` only
  to the block layers (attention, feed-forward) and refusing a ``.alpha`` left
  over elsewhere: outside the blocks alpha / rank is therefore folded into
  ``lora_B`` and no ``.alpha`` is written (scale 1 for every reader).
* ``diffusers``: ``transformer.<diffusers module>.lora_A.weight`` (what
  ``WanPipeline.load_lora_weights`` reads; alpha / rank is folded into the
  weights because that format carries no alpha).

A LoKr whose two Kronecker factors are both full stores an ``alpha`` that
scales nothing (`AdapterWeights.idle_alphas`); the ``comfyui`` file leaves it
out, so no loader can scale the delta by it. A LyCORIS adapter asked for in
``diffusers`` layout is left to the core, which writes LyCORIS's own layout
(diffusers' Wan loader reads LoRA only).

Not converted by diffusers (ComfyUI loads them): a LoRA on ``patch_embedding``
(a Conv3d), or one with no block layer at all; ``lora_format = "diffusers"``
writes those for diffusers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from tuner.lora.layouts import LoraNaming
    from tuner.types.adapter import AdapterWeights

__all__ = ["ORIGINAL_NAMES", "original_name", "diffusers_name", "lora_naming", "comfyui_tensors", "save_adapter"]

# diffusers module names -> the original Wan checkpoint's (ComfyUI's), for the modules an adapter may target.
ORIGINAL_NAMES: dict[str, str] = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn1.norm_q": "self_attn.norm_q",
    "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.norm_q": "cross_attn.norm_q",
    "attn2.norm_k": "cross_attn.norm_k",
    "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img",
    "attn2.norm_added_k": "cross_attn.norm_k_img",
    "norm2": "norm3",  # the cross-attention norm: diffusers and the original swap norm2 and norm3
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "proj_out": "head.head",
    "patch_embedding": "patch_embedding",
}


def original_name(module: str) -> str:
    """``blocks.3.attn1.to_q`` -> ``blocks.3.self_attn.q``."""
    prefix = ""
    if module.startswith("blocks."):
        index, _, module = module[len("blocks.") :].partition(".")
        prefix = f"blocks.{index}."
    if module not in ORIGINAL_NAMES:
        raise ValueError(f"no original Wan name known for module '{prefix}{module}'")
    return prefix + ORIGINAL_NAMES[module]


_DIFFUSERS_NAMES = {v: k for k, v in ORIGINAL_NAMES.items()}


def diffusers_name(original: str) -> str:
    """``blocks.3.self_attn.q`` -> ``blocks.3.attn1.to_q`` (the inverse of `original_name`)."""
    prefix = ""
    if original.startswith("blocks."):
        index, _, original = original[len("blocks.") :].partition(".")
        if not index.isdigit():
            raise ValueError(f"no Wan module is named 'blocks.{index}.{original}'")
        prefix = f"blocks.{index}."
    if original not in _DIFFUSERS_NAMES:
        raise ValueError(f"no Wan module has the original name '{prefix}{original}'")
    return prefix + _DIFFUSERS_NAMES[original]


def lora_naming() -> LoraNaming:
    from tuner.lora.layouts import LoraNaming

    return LoraNaming(
        to_original=original_name,
        from_original=diffusers_name,
        loads_in={
            "comfyui": "ComfyUI (LoRA loader), kijai's WanVideoWrapper, diffusers' Wan pipelines (converted on load)",
            "kohya": "ComfyUI, musubi-tuner, diffusers' Wan pipelines (when every attention and feed-forward layer of"
            " every block is adapted)",
            "diffusers": "diffusers' Wan pipelines; not ComfyUI's native Wan loader (no rule for these names)",
            "peft": "peft (inject_adapter_in_model + set_peft_model_state_dict); not ComfyUI",
            "lycoris": "LyCORIS (create_lycoris_from_weights); not diffusers",
        },
        comfyui_tensors=comfyui_tensors,
    )


def comfyui_tensors(weights: AdapterWeights) -> dict[str, torch.Tensor]:
    """The adapter under ComfyUI's names: see the module docstring for which modules carry ``.alpha``."""
    import torch

    # Outside the blocks diffusers' converter reads no alpha: fold alpha / rank in and write none there.
    outside = {m for m in weights.alphas if not m.startswith("blocks.")}
    baked = weights.scale_baked() if outside else weights.tensors
    idle = weights.idle_alphas()
    out = {}
    for key in weights.tensors:
        module = weights.module_of(key)
        if module in idle and key == f"{module}.alpha":
            continue
        out[f"diffusion_model.{original_name(module)}{key[len(module):]}"] = baked[key] if module in outside else weights.tensors[key]
    for module, alpha in weights.alphas.items():
        if module not in outside:
            out[f"diffusion_model.{original_name(module)}.alpha"] = torch.tensor(float(alpha))
    return out


def save_adapter(
    weights: AdapterWeights, path: Path, lora_format: str, metadata: dict[str, str] | None = None
) -> Path | None:
    from safetensors.torch import save_file

    metadata = metadata or {}

    if lora_format == "comfyui":
        save_file({k: v.contiguous() for k, v in comfyui_tensors(weights).items()}, str(path), metadata=metadata)
        return path
    if weights.kind != "lora":
        return None
    # What WanPipeline.save_lora_weights writes (the "transformer." prefix), with our metadata beside diffusers'.
    tensors = {f"transformer.{k}": v.contiguous() for k, v in weights.scale_baked().items()}
    save_file(tensors, str(path), metadata={"format": "pt", **metadata})
    return path

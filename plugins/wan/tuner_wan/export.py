"""Writing trained adapters in the layouts Wan's tools read.

* ``diffusers``: ``transformer.<diffusers module>.lora_A.weight`` (what
  ``WanPipeline.load_lora_weights`` reads; alpha / rank is folded into the
  weights because that format carries no alpha).
* ``comfyui``: the original Wan names, ``diffusion_model.blocks.N.self_attn.q``
  with ``.lora_A.weight`` / ``.lora_B.weight`` / ``.alpha`` for LoRA and the
  LyCORIS tensors (``.lokr_w1``, ...) for LyCORIS; ComfyUI reads both, and
  diffusers converts the LoRA ones on load.

A LyCORIS adapter asked for in ``diffusers`` layout is left to the core, which
writes LyCORIS's own layout (diffusers' Wan loader reads LoRA only).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from tuner.types import AdapterWeights

__all__ = ["ORIGINAL_NAMES", "original_name", "save_adapter"]

# diffusers module names -> the original Wan checkpoint's, for the modules LoRA may target.
ORIGINAL_NAMES: dict[str, str] = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
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


def _comfyui(weights: AdapterWeights) -> dict[str, torch.Tensor]:
    import torch

    out = {}
    for key, value in weights.tensors.items():
        module = weights.module_of(key)
        out[f"diffusion_model.{original_name(module)}{key[len(module):]}"] = value
    for module, alpha in weights.alphas.items():
        out[f"diffusion_model.{original_name(module)}.alpha"] = torch.tensor(float(alpha))
    return out


def save_adapter(weights: AdapterWeights, path: Path, lora_format: str) -> Path | None:
    from safetensors.torch import save_file

    if lora_format == "comfyui":
        save_file({k: v.contiguous() for k, v in _comfyui(weights).items()}, str(path))
        return path
    if weights.kind != "lora":
        return None
    from diffusers import WanPipeline

    WanPipeline.save_lora_weights(
        save_directory=str(path.parent), transformer_lora_layers=weights.scale_baked(), weight_name=path.name
    )
    return path

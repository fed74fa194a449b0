"""Writing trained adapters in the layouts Flux's tools read.

* ``diffusers``: ``transformer.<diffusers module>.lora_A.weight`` (what
  ``FluxPipeline.load_lora_weights`` reads; alpha / rank is folded into the
  weights because that format carries no alpha).
* ``comfyui``: kohya / sd-scripts names of the original (BFL) checkpoint,
  ``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`` / ``.lora_up.weight``
  / ``.alpha``, which ComfyUI maps onto ``diffusion_model.<original>.weight``
  (and diffusers' kohya converter reads back). The original checkpoint fuses
  q/k/v (``img_attn.qkv``, ``txt_attn.qkv``) and, in single blocks, q/k/v and
  the MLP input (``linear1``); the pieces' LoRAs are fused exactly into one:
  the downs stacked, the ups block-diagonal (row offsets as ComfyUI's
  ``flux_to_diffusers`` slices them), each piece's alpha / rank folded into its
  down so the fused alpha equals the fused rank.

``diffusers`` is what ``lora_format = "auto"`` (the default) writes for Flux:
ComfyUI maps ``transformer.<diffusers module>`` onto the original weights
itself (``flux_to_diffusers``, the same slices), so that file loads in both;
the kohya file does not load in diffusers for every Flux (diffusers' kohya
converter assumes FLUX.1's full widths).

A LyCORIS adapter cannot be fused that way: ``comfyui`` then writes LyCORIS's
own ``lycoris_<diffusers module>`` layout, which ComfyUI's Flux loader maps
onto the fused weights itself (with the same slices), without the ``alpha``
of a LoKr whose factors are both full (it scales nothing; see
`AdapterWeights.idle_alphas`); ``diffusers`` leaves LyCORIS to the core, which
writes the same layout with every alpha, as LyCORIS itself reloads it
(diffusers' Flux loader reads LoRA only).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from tuner.types.adapter import AdapterWeights

__all__ = ["DOUBLE_NAMES", "SINGLE_NAMES", "TOP_NAMES", "FUSED_PIECES", "original_piece", "kohya_tensors", "save_adapter"]

# Inside transformer_blocks.N -> (original module inside double_blocks.N, piece index in the fused weight).
DOUBLE_NAMES: dict[str, tuple[str, int]] = {
    "attn.to_q": ("img_attn.qkv", 0),
    "attn.to_k": ("img_attn.qkv", 1),
    "attn.to_v": ("img_attn.qkv", 2),
    "attn.add_q_proj": ("txt_attn.qkv", 0),
    "attn.add_k_proj": ("txt_attn.qkv", 1),
    "attn.add_v_proj": ("txt_attn.qkv", 2),
    "attn.to_out.0": ("img_attn.proj", 0),
    "attn.to_add_out": ("txt_attn.proj", 0),
    "ff.net.0.proj": ("img_mlp.0", 0),
    "ff.net.2": ("img_mlp.2", 0),
    "ff_context.net.0.proj": ("txt_mlp.0", 0),
    "ff_context.net.2": ("txt_mlp.2", 0),
    "norm1.linear": ("img_mod.lin", 0),
    "norm1_context.linear": ("txt_mod.lin", 0),
}
# Inside single_transformer_blocks.N -> inside single_blocks.N.
SINGLE_NAMES: dict[str, tuple[str, int]] = {
    "attn.to_q": ("linear1", 0),
    "attn.to_k": ("linear1", 1),
    "attn.to_v": ("linear1", 2),
    "proj_mlp": ("linear1", 3),
    "proj_out": ("linear2", 0),
    "norm.linear": ("modulation.lin", 0),
}
# Outside the blocks (norm_out is left out: the original swaps its shift and scale halves).
TOP_NAMES: dict[str, str] = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "proj_out": "final_layer.linear",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
}
# Fused original weights: their pieces' output rows, in units of the hidden size (the MLP is 4x wide).
FUSED_PIECES: dict[str, tuple[int, ...]] = {"img_attn.qkv": (1, 1, 1), "txt_attn.qkv": (1, 1, 1), "linear1": (1, 1, 1, 4)}


def original_piece(module: str) -> tuple[str, int]:
    """``single_transformer_blocks.3.proj_mlp`` -> (``single_blocks.3.linear1``, 3): original module and piece."""
    for prefix, original, names in (
        ("transformer_blocks.", "double_blocks.", DOUBLE_NAMES),
        ("single_transformer_blocks.", "single_blocks.", SINGLE_NAMES),
    ):
        if module.startswith(prefix):
            index, _, inner = module[len(prefix) :].partition(".")
            if inner in names:
                name, piece = names[inner]
                return f"{original}{index}.{name}", piece
            break
    else:
        if module in TOP_NAMES:
            return TOP_NAMES[module], 0
    raise ValueError(f"no original Flux name known for module '{module}'")


def kohya_tensors(weights: AdapterWeights, hidden_size: int) -> dict[str, torch.Tensor]:
    """The LoRA in kohya names, fused where the original checkpoint fuses (see the module docstring)."""
    import torch

    groups: dict[str, dict[int, str]] = {}
    for module in weights.modules():
        original, piece = original_piece(module)
        groups.setdefault(original, {})[piece] = module
    out: dict[str, Any] = {}
    for original, pieces in groups.items():
        kind = original.split(".", 2)[-1]
        rows = [hidden_size * n for n in FUSED_PIECES.get(kind, ())]
        downs, ups = [], []
        for piece, module in sorted(pieces.items()):
            down = weights.tensors[f"{module}.lora_A.weight"].float()
            up = weights.tensors[f"{module}.lora_B.weight"].float()
            rank = down.shape[0]
            downs.append(down * (weights.alphas.get(module, rank) / rank))
            if rows:  # place this piece's up at its rows of the fused weight
                full = torch.zeros(sum(rows), rank)
                start = sum(rows[:piece])
                full[start : start + rows[piece]] = up
                up = full
            ups.append(up)
        key = "lora_unet_" + original.replace(".", "_")
        dtype = weights.tensors[f"{module}.lora_A.weight"].dtype
        out[f"{key}.lora_down.weight"] = torch.cat(downs, 0).to(dtype)
        out[f"{key}.lora_up.weight"] = torch.cat(ups, 1).to(dtype)
        out[f"{key}.alpha"] = torch.tensor(float(out[f"{key}.lora_down.weight"].shape[0]))
    return out


def save_adapter(
    weights: AdapterWeights, path: Path, lora_format: str, hidden_size: int, metadata: dict[str, str] | None = None
) -> Path | None:
    from safetensors.torch import save_file

    metadata = metadata or {}

    if weights.kind != "lora":
        if lora_format != "comfyui":
            return None
        idle = {f"lycoris_{module.replace('.', '_')}.alpha" for module in weights.idle_alphas()}
        native = {k: v.contiguous() for k, v in weights.native().items() if k not in idle}
        save_file(native, str(path), metadata={**metadata, "tuner.layout": "lycoris"})
        return path
    if lora_format == "comfyui":
        # diffusers' kohya reader splits the fused layers (other shapes than ours): it infers the config itself.
        kohya = {k: v for k, v in metadata.items() if k != "lora_adapter_metadata"}
        save_file({k: v.contiguous() for k, v in kohya_tensors(weights, hidden_size).items()}, str(path), metadata=kohya)
        return path
    # What FluxPipeline.save_lora_weights writes (the "transformer." prefix), with our metadata beside diffusers'.
    tensors = {f"transformer.{k}": v.contiguous() for k, v in weights.scale_baked().items()}
    save_file(tensors, str(path), metadata={"format": "pt", **metadata})
    return path

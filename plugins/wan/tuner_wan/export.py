"""Writing the LoRA in the key layout WanPipeline.load_lora_weights reads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["save_diffusers_lora"]


def save_diffusers_lora(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    """Keys become ``transformer.blocks.N.attn1.to_q.lora_A.weight``."""
    from diffusers import WanPipeline

    WanPipeline.save_lora_weights(
        save_directory=str(path.parent), transformer_lora_layers=state_dict, weight_name=path.name
    )
    return path

"""Which dtype the frozen base weights are stored in."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig

__all__ = ["base_weight_dtype"]

_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "no": "float32"}


def base_weight_dtype(config: RunConfig) -> torch.dtype:
    """``base_model_default_dtype``, or the mixed-precision dtype when it is ``auto``."""
    import torch

    tc = config.train
    name = tc.mixed_precision if tc.base_model_default_dtype == "auto" else tc.base_model_default_dtype
    return getattr(torch, _NAMES[name])

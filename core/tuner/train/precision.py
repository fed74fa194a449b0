"""Which dtype each part of a run is kept in.

The rule (DESIGN.md, "Rules learned from measurement"): **trainable parameters
are float32, always.** The frozen base is stored in ``base_model_default_dtype``
(``auto``: the ``mixed_precision`` dtype) and runs under autocast; the adapter
(peft LoRA, LyCORIS, anything else that trains), its optimizer state and the EMA
stay float32, because bf16 rounds away updates smaller than about 1/256 of a weight
and fp16 overflows. fp16 also scales the loss (accelerate's gradient scaler) and
skips the steps whose gradients overflow. The one exception is asked for by
name: the ``adamw_bf16`` optimizer keeps the adapter in bf16 and compensates
with Kahan summation. The exported file's dtype is a separate choice,
``save_dtype``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig

__all__ = [
    "base_weight_dtype",
    "trainable_dtype",
    "cast_trainable",
    "save_dtype",
    "enable_fp16_on_cpu",
    "forward_autocast",
]

_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "no": "float32"}


def base_weight_dtype(config: RunConfig) -> torch.dtype:
    """``base_model_default_dtype``, or the mixed-precision dtype when it is ``auto``."""
    import torch

    tc = config.train
    name = tc.mixed_precision if tc.base_model_default_dtype == "auto" else tc.base_model_default_dtype
    return getattr(torch, _NAMES[name])


def trainable_dtype(config: RunConfig) -> torch.dtype:
    """float32, unless the optimizer keeps its weights in another dtype by design (``adamw_bf16``)."""
    import torch

    from tuner.train.optimizers import adapter_dtype

    return getattr(torch, adapter_dtype(config.train.optimizer) or "float32")


def cast_trainable(params: list[torch.nn.Parameter], dtype: torch.dtype) -> None:
    """Store ``params`` in ``dtype``, in place (the objects stay the same; peft made them in the base's dtype)."""
    for param in params:
        if param.dtype != dtype:
            param.data = param.data.to(dtype)


def save_dtype(config: RunConfig) -> torch.dtype:
    """The dtype exported adapter files are written in."""
    import torch

    return getattr(torch, _NAMES[config.train.save_dtype])


def forward_autocast(config: RunConfig, device_type: str) -> Any:
    """The autocast accelerate opens around a trained network's own forward, as a context to open elsewhere.

    accelerate wraps the network's ``forward`` under ``mixed_precision``; a family's
    forward that calls the blocks itself (a routed forward) bypasses that wrapper
    and opens this instead, so both run in the same precision.
    """
    import torch

    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.train.mixed_precision)
    return torch.autocast(device_type, dtype=amp or torch.float32, enabled=amp is not None)


def enable_fp16_on_cpu(accelerator: Any) -> None:
    """Give a CPU run with ``mixed_precision = "fp16"`` what accelerate gives a GPU one.

    accelerate 1.15 turns fp16 off on a CPU (no autocast, no gradient scaler), which trained the
    model in plain fp16 and gave NaN losses. torch has both on the CPU (float16 autocast,
    ``GradScaler("cpu")``), so the run takes the GPU's code path: accelerate wraps the forward in
    autocast at ``prepare`` and its optimizer wrapper steps through the scaler.
    """
    import torch

    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu" and accelerator.scaler is None:
        accelerator.native_amp = True
        accelerator.scaler = torch.amp.GradScaler("cpu")

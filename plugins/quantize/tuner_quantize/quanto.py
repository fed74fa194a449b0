"""Quantizing frozen weights with optimum-quanto.

quanto replaces each ``nn.Linear`` with its ``QLinear`` (still an ``nn.Linear``), so peft wraps it
like any linear layer: the LoRA branch trains in full precision and the base output comes from the
quantized weights. Only the blocks of the denoiser are quantized; the embeddings and the output
projection are small and the most sensitive to it.

On CUDA (assumed, not run in this project's CI): with ``quantize_via = "accelerator"`` each block
visits the card in bf16 while it is quantized and comes back packed, so the start-up peak on the
card is one bf16 block plus what is already there; quanto's int8 matmuls then run through its own
CUDA kernels (optimum-quanto builds them on first use: the first step is slower), and the packed
weights are tensor subclasses that offloading cannot move (the offload plugin refuses the pair).
fp8 needs a card with fp8 support in torch (compute capability 8.9 or higher) for speed; elsewhere
quanto falls back to dequantize-then-matmul.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["QTYPES", "quantize_weights"]

# precision -> optimum.quanto weight type
QTYPES = {
    "int8-quanto": "qint8",
    "fp8-quanto": "qfloat8",
    "fp8uz-quanto": "qfloat8_e4m3fnuz",
    "int4-quanto": "qint4",
    "int2-quanto": "qint2",
}


def quantize_weights(
    module: torch.nn.Module, precision: str, *, include: list[str] | None, where: torch.device, option: str
) -> int:
    """Quantize ``module``'s layers (those matching ``include``, or all) on ``where``, freeze, put it back.

    Returns how many layers were quantized.
    """
    from tuner.errors import PluginError

    try:
        import optimum.quanto as quanto
    except ImportError:
        raise PluginError(
            f"{option} = '{precision}' needs optimum-quanto: pip install 'tuner[quanto]' (or optimum-quanto)"
        ) from None
    home = next(module.parameters()).device
    module.to(where)
    quanto.quantize(module, weights=getattr(quanto, QTYPES[precision]), include=include)
    quanto.freeze(module)  # materialise the packed weights and drop the full-precision ones
    module.requires_grad_(False)
    module.to(home)
    return sum(isinstance(m, quanto.QModuleMixin) for m in module.modules())

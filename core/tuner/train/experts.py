"""Several denoisers (experts): each sample through the one that owns its noise level, and turns on one accelerator.

`run_experts` is the forward every multi-expert family shares: it splits a
batch by the trained expert that owns each sample's sigma and puts the
predictions back in batch order.

A model that splits the noise range between experts (Wan 2.2 A14B: two 14B
transformers) rarely fits on the accelerator twice. By default the expert
about to run holds the accelerator and the others wait in CPU memory: only
their frozen base weights move; adapter weights (and so the optimizer's
state) stay on the accelerator the whole run. A feature plugin that manages
weight placement itself (the offload plugin) sets ``bundle.run.expert_switch``
first, and the core leaves it alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from tuner.types.bundle import Expert, ModelBundle

__all__ = ["run_experts", "move_frozen", "ExpertTurns", "install_expert_turns"]


def run_experts(
    bundle: ModelBundle,
    sigmas: torch.Tensor,
    inputs: dict[str, torch.Tensor],
    forward: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor],
) -> torch.Tensor:
    """``forward(module, inputs)`` with each sample run by the trained expert that owns its sigma.

    Tensors in ``inputs`` whose first dimension is the batch are split by
    expert; the predictions are put back in batch order. With one trained
    denoiser this is one call.
    """
    experts = bundle.trained_experts()
    if len(experts) == 1:
        return forward(bundle.enter(experts[0]) if bundle.experts else bundle.denoiser, inputs)
    batch = sigmas.shape[0]
    pred: torch.Tensor | None = None
    for expert in experts:
        rows = expert.owns(sigmas).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        part = {k: v.index_select(0, rows.to(v.device)) if v.shape[:1] == (batch,) else v for k, v in inputs.items()}
        out = forward(bundle.enter(expert), part)
        if pred is None:
            pred = out.new_zeros((batch, *out.shape[1:]))
        pred = pred.index_copy(0, rows.to(out.device), out)
    assert pred is not None, "the experts' ranges cover [0, 1]"
    return pred


def move_frozen(module: torch.nn.Module, device: torch.device) -> None:
    """Move ``module``'s frozen parameters and buffers to ``device``; trainable parameters stay where they are."""
    for sub in module.modules():
        for name, param in sub._parameters.items():
            if param is not None and not param.requires_grad and param.device != device:
                param.data = param.data.to(device, non_blocking=True)
        for name, buffer in sub._buffers.items():
            if buffer is not None and buffer.device != device:
                sub._buffers[name] = buffer.to(device, non_blocking=True)


class ExpertTurns:
    """``switch(expert)``: that expert's weights onto the accelerator, every other expert's into CPU memory."""

    def __init__(
        self,
        bundle: ModelBundle,
        device: torch.device,
        move: Callable[[torch.nn.Module, torch.device], None] = move_frozen,
    ) -> None:
        import torch

        self.bundle, self.device, self.move = bundle, device, move
        self.park = torch.device("cpu")
        self.current: Expert | None = None

    def __call__(self, expert: Expert) -> None:
        if self.current is expert:
            return
        for other in self.bundle.experts:
            if other is not expert:
                self.move(other.module, self.park)
        self.move(expert.module, self.device)
        self.current = expert


def install_expert_turns(bundle: ModelBundle, device: torch.device, keep_all: bool) -> None:
    """Make the bundle's experts take turns on ``device`` unless asked to keep them all there or a plugin decided."""
    if len(bundle.experts) < 2 or bundle.run.expert_switch is not None or keep_all or device.type == "cpu":
        return
    turns = ExpertTurns(bundle, device)
    for expert in bundle.experts:  # start with all of them parked; the first use brings one in
        move_frozen(expert.module, turns.park)
    bundle.run.expert_switch = turns

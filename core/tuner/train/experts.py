"""Several denoisers (experts) on one accelerator: they take turns.

A model that splits the noise range between experts (Wan 2.2 A14B: two 14B
transformers) rarely fits on the accelerator twice. By default the expert
about to run holds the accelerator and the others wait in CPU memory: only
their frozen base weights move; adapter weights (and so the optimizer's
state) stay on the accelerator the whole run. A feature plugin that manages
weight placement itself (the offload plugin) sets ``bundle.expert_switch``
first, and the core leaves it alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from tuner.types.bundle import Expert, ModelBundle

__all__ = ["move_frozen", "ExpertTurns", "install_expert_turns"]


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
    if len(bundle.experts) < 2 or bundle.expert_switch is not None or keep_all or device.type == "cpu":
        return
    turns = ExpertTurns(bundle, device)
    for expert in bundle.experts:  # start with all of them parked; the first use brings one in
        move_frozen(expert.module, turns.park)
    bundle.expert_switch = turns

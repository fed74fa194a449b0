"""Whole networks take turns on the accelerator (model CPU offload, offload during start-up).

An encoder's turn starts when its forward (or, for a VAE, ``encode``/``decode``) is called: an
accelerate module hook, the mechanism diffusers' ``enable_model_cpu_offload`` uses, since diffusers
calls those hooks from a VAE's ``encode`` and ``decode`` and pipelines read their
``execution_device``. The denoiser's turn starts when any of its layers runs (a forward pre-hook on
each layer that holds tensors), because a family may run its blocks from its own loop (token
routing does) without calling the denoiser's forward. Unlike a fixed chain, any network may go
next: before one runs, every other movable network on the accelerator goes back to CPU memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["Turns"]


def _on_accelerator(module: torch.nn.Module) -> bool:
    param = next(module.parameters(), None)
    return param is not None and param.device.type != "cpu"


@dataclass(eq=False)
class Turns:
    """Networks that share the accelerator one at a time."""

    device: torch.device
    movable: list[torch.nn.Module] = field(default_factory=list)
    current: torch.nn.Module | None = None

    def take(self, module: torch.nn.Module, *, movable: bool) -> None:
        """``module`` is about to run: make room for it and, if it moves, bring it in."""
        if self.current is module:
            return
        for other in self.movable:
            if other is not module and _on_accelerator(other):
                other.to("cpu")
        if movable:
            module.to(self.device)
        self.current = module

    def add_encoder(self, module: torch.nn.Module) -> None:
        """An encoder: in CPU memory between its turns."""
        from accelerate.hooks import add_hook_to_module

        module.to("cpu")
        self.movable.append(module)
        add_hook_to_module(module, _turn_hook(self), append=True)

    def add_denoiser(self, model: torch.nn.Module, *, movable: bool) -> None:
        """The denoiser: with ``movable`` it too lives in CPU memory between its turns; otherwise it stays
        where it is (the core or another feature places it) and only sends the encoders away when it runs."""
        if movable:
            self.add_encoder(model)  # also moves the inputs and tells pipelines where it runs

        def turn(layer: torch.nn.Module, args: Any) -> None:
            self.take(model, movable=movable)

        for layer in model.modules():
            if layer._parameters or layer._buffers:
                layer.register_forward_pre_hook(turn)


def _turn_hook(turns: Turns) -> Any:
    from accelerate.hooks import ModelHook
    from accelerate.utils import send_to_device

    class TakeTurn(ModelHook):
        # Pipelines ask a hooked network's execution_device where to create latents and prompt tensors.
        execution_device = turns.device

        def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            turns.take(module, movable=True)
            return send_to_device(args, turns.device), send_to_device(kwargs, turns.device)

    return TakeTurn()

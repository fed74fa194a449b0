"""Capturing one block's output hidden states during the training forward, with hooks installed once.

`BlockCapture` registers two PyTorch module hooks on each trained denoiser: a
forward hook on the tapped block keeps its output, and a pre-hook on the first
block empties the slot when a new forward starts. Why the pre-hook: with
gradient checkpointing a block runs again during backward, and whatever that
recomputation hands the hook must not be mistaken for the next step's output;
the next forward always starts at the first block (token routing included,
since the family runs every block), so the stale tensor is dropped there.
Nothing is kept in eval mode or without gradients (validation, eval loss).
What a block returns is the family's business: ``ModelBundle.latent_tokens``
picks the latent tokens' hidden states out of it (Flux's double-stream blocks
return the text tokens' first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuner.errors import PluginError

if TYPE_CHECKING:
    import torch

    from tuner.types.bundle import ModelBundle

__all__ = ["resolve_block", "block_stack", "BlockCapture"]


def resolve_block(index: int, num_blocks: int) -> int:
    block = index + num_blocks if index < 0 else index
    if not 0 <= block < num_blocks:
        raise PluginError(
            f"crepa_block_index = {index} is outside this model's {num_blocks} blocks"
            f" (use 0..{num_blocks - 1}, or -{num_blocks}..-1 counting from the end)"
        )
    return block


def block_stack(bundle: ModelBundle, module: torch.nn.Module) -> Any:
    """The repeated blocks of ``module`` (the first of ``bundle.block_lists``)."""
    if not bundle.block_lists:
        raise PluginError(
            f"CREPA needs the block stack of model family '{bundle.family}' (bundle.block_lists), which it does not"
            " give: set crepa_enabled = false"
        )
    return module.get_submodule(bundle.block_lists[0])


@dataclass(eq=False)
class BlockCapture:
    """Keeps the output of block ``block`` of each denoiser of ``modules`` from its latest training forward."""

    modules: list[torch.nn.Module]
    block: int
    stack_path: str
    pick: Callable[[Any], torch.Tensor]  # ModelBundle.latent_tokens: the latent tokens of a block's output
    outputs: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    handles: list[Any] = field(default_factory=list)

    def install(self) -> None:
        for module in self.modules:
            slot: list[torch.Tensor] = []
            self.outputs[id(module)] = slot
            blocks = module.get_submodule(self.stack_path)
            self.handles.append(blocks[0].register_forward_pre_hook(self._starter(slot)))
            self.handles.append(blocks[self.block].register_forward_hook(self._keeper(slot, self.pick)))

    @staticmethod
    def _starter(slot: list[torch.Tensor]) -> Any:
        def start(block: torch.nn.Module, args: Any) -> None:
            slot.clear()

        return start

    @staticmethod
    def _keeper(slot: list[torch.Tensor], pick: Callable[[Any], torch.Tensor]) -> Any:
        import torch

        def keep(block: torch.nn.Module, args: Any, output: Any) -> None:
            if block.training and torch.is_grad_enabled():
                slot.append(pick(output))

        return keep

    def take(self, module: torch.nn.Module) -> torch.Tensor | None:
        """The hidden states ``(batch, tokens, dim)`` ``module`` last produced in training, or ``None``; forgets them."""
        slot = self.outputs.get(id(module), [])
        found = slot[-1] if slot else None
        slot.clear()
        return found

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

"""Token routing: the start-up check, and tensor helpers for the families' mechanism.

A token router (`tuner.types.routes.TokenRouter`, offered through the `route_tokens`
hook) decides which tokens skip which blocks. A model family carries it out in
its training forward; `gather_tokens` and `scatter_tokens` are the two tensor
moves every family needs for that, kept here because families cannot import
the router's plugin. `routed_blocks` carries a whole plan out on a diffusers-style
block stack (a ``ModuleList`` the model's own forward loops over) with module
hooks, so a family need not copy its model's forward to support routing.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tuner.errors import PluginError

if TYPE_CHECKING:
    import torch

    from tuner.types.bundle import ModelBundle
    from tuner.types.routes import TokenRoute, TokenRouter

__all__ = ["check_routing", "gather_tokens", "scatter_tokens", "routed_blocks", "run_block"]


def check_routing(bundle: ModelBundle, router: TokenRouter) -> list[tuple[int, int]]:
    """Refuse, at start-up, a router this model cannot honour; return its resolved spans.

    The family must support routing, the spans must fit its block stack (the
    router raises `tuner.errors.ConfigError` otherwise), and no feature may read
    hidden states from a block inside a span (`RunSlots.block_taps`): there
    only the kept tokens exist. A tap on a span's last block is refused too,
    because the skipped tokens rejoin after that block.
    """
    if not bundle.supports_token_routing:
        raise PluginError(f"token routing is configured but model family '{bundle.family}' does not support it")
    spans = router.spans(bundle.num_blocks)
    # A router may name the option that sets its routes (``option``), so the message names both settings.
    routes = getattr(router, "option", None) or "the routes"
    for feature, tap in sorted(bundle.run.block_taps.items()):
        block = tap + bundle.num_blocks if tap < 0 else tap
        for start, end in spans:
            if start <= block <= end:
                raise PluginError(
                    f"{feature} reads the hidden states of block {tap}, which token routing skips for some tokens"
                    f" (blocks {start}..{end}): move {feature} to a block outside every route, or change {routes}"
                )
    return spans


def run_block(model: Any, block: Any, *args: Any) -> Any:
    """``block(*args)``, recomputed in backward when ``model`` has gradient checkpointing on (as diffusers' forwards do).

    For a family's hand-written routed forward, which calls its blocks itself.
    """
    import torch

    if torch.is_grad_enabled() and getattr(model, "gradient_checkpointing", False):
        return model._gradient_checkpointing_func(block, *args)
    return block(*args)


def _index_like(index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``index`` (batch, kept) shaped for ``torch.gather`` along dim 1 of ``x``."""
    shape = (index.shape[0], index.shape[1], *x.shape[2:])
    return index.view(*index.shape, *([1] * (x.ndim - 2))).expand(shape)


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The tokens ``index`` of each sample: ``(B | 1, N, ...)`` -> ``(B, kept, ...)``.

    Dim 1 is the token dim; anything after it travels with the token (channels,
    heads, a per-token RoPE table). A tensor with batch size 1 shared by the
    batch (a RoPE table, say) is gathered for every sample.
    """
    if x.shape[0] != index.shape[0]:
        x = x.expand(index.shape[0], *x.shape[1:])
    return x.gather(1, _index_like(index.to(x.device), x))


def scatter_tokens(full: torch.Tensor, routed: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``full`` with the tokens ``index`` replaced by ``routed`` (the inverse of `gather_tokens`).

    Out of place, so autograd sends gradients to ``routed`` for the kept tokens
    and to ``full`` for the ones that skipped.
    """
    return full.scatter(1, _index_like(index.to(full.device), routed), routed.to(full.dtype))


def _gather_any(value: Any, index: torch.Tensor) -> Any:
    if isinstance(value, (tuple, list)):  # (cos, sin) RoPE tables travel together
        return type(value)(_gather_any(v, index) for v in value)
    return gather_tokens(value, index)


def _routed_block_class() -> type:
    import torch

    class RoutedBlock(torch.nn.Module):
        """Stands in for one block of a route; keeps routing when gradient checkpointing recomputes it in backward."""

        def __init__(self, block: torch.nn.Module, route: TokenRoute, saved: dict, hidden: str, per_token: tuple) -> None:
            super().__init__()
            self.block = block
            self.route, self.saved, self.hidden, self.per_token = route, saved, hidden, per_token
            self.first = self.last = False
            # The class's forward: a feature may have replaced the instance's with a (*args, **kwargs) wrapper.
            self.signature = inspect.signature(type(block).forward)

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            route = self.route
            bound = self.signature.bind(self.block, *args, **kwargs)
            if self.first:
                self.saved[route.start] = bound.arguments[self.hidden]
                bound.arguments[self.hidden] = gather_tokens(bound.arguments[self.hidden], route.keep)
            for name in self.per_token:
                if bound.arguments.get(name) is not None:
                    bound.arguments[name] = _gather_any(bound.arguments[name], route.keep)
            output = self.block(*bound.args[1:], **bound.kwargs)
            if self.last:
                output = scatter_tokens(self.saved[route.start], output, route.keep)
            return output

    return RoutedBlock


@contextmanager
def routed_blocks(
    blocks: torch.nn.ModuleList,
    routes: list[TokenRoute],
    *,
    hidden: str = "hidden_states",
    per_token: tuple[str, ...] = (),
) -> Iterator[None]:
    """Carry ``routes`` out on ``blocks`` for the forwards run inside the ``with``.

    For a model whose forward passes the latent tokens from block to block as
    ``(batch, tokens, dim)`` (argument ``hidden`` of each block, returned by
    it): before a route's first block only the kept tokens go in, every block
    of the route also gets the kept rows of the arguments named in
    ``per_token`` (RoPE tables, per-token modulation; a tuple of tensors is
    gathered element-wise), and after the route's last block the routed tokens
    are scattered back among those that skipped. The model's own forward runs
    unchanged: inside the ``with`` the route's entries of ``blocks`` are stand-ins
    that wrap the blocks, so gradient checkpointing, which recomputes a block
    in the backward pass after the ``with`` has ended, routes it again. Call
    ``router.plan`` once per forward and open this around that forward.
    """
    if not routes:
        yield
        return
    routed_block = _routed_block_class()
    originals = list(blocks)
    saved: dict[int, torch.Tensor] = {}  # route start -> the full hidden states entering it
    for route in routes:
        for i in range(route.start, route.end + 1):
            blocks[i] = routed_block(originals[i], route, saved, hidden, per_token)
        blocks[route.start].first = blocks[route.end].last = True
    try:
        yield
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block

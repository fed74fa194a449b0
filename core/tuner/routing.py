"""Token routing: the start-up check, and tensor helpers for the families' mechanism.

A token router (`tuner.types.TokenRouter`, offered through the `route_tokens`
hook) decides which tokens skip which blocks. A model family carries it out in
its training forward; `gather_tokens` and `scatter_tokens` are the two tensor
moves every family needs for that, kept here because families cannot import
the router's plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.errors import PluginError

if TYPE_CHECKING:
    import torch

    from tuner.types import ModelBundle, TokenRouter

__all__ = ["check_routing", "gather_tokens", "scatter_tokens"]


def check_routing(bundle: ModelBundle, router: TokenRouter) -> list[tuple[int, int]]:
    """Refuse, at start-up, a router this model cannot honour; return its resolved spans.

    The family must support routing, the spans must fit its block stack (the
    router raises `tuner.errors.ConfigError` otherwise), and no feature may read
    hidden states from a block inside a span (`ModelBundle.block_taps`): there
    only the kept tokens exist. A tap on a span's last block is refused too,
    because the skipped tokens rejoin after that block.
    """
    if not bundle.supports_token_routing:
        raise PluginError(f"token routing is configured but model family '{bundle.family}' does not support it")
    spans = router.spans(bundle.num_blocks)
    # A router may name the option that sets its routes (``option``), so the message names both settings.
    routes = getattr(router, "option", None) or "the routes"
    for feature, tap in sorted(bundle.block_taps.items()):
        block = tap + bundle.num_blocks if tap < 0 else tap
        for start, end in spans:
            if start <= block <= end:
                raise PluginError(
                    f"{feature} reads the hidden states of block {tap}, which token routing skips for some tokens"
                    f" (blocks {start}..{end}): move {feature} to a block outside every route, or change {routes}"
                )
    return spans


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

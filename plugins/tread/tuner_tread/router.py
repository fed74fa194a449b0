"""TREAD's policy: which latent tokens skip which blocks, drawn at random per sample.

The model family carries the plan out (see `tuner.types.routes.TokenRouter`); this
module only resolves the configured routes against the model's depth and draws
the tokens each route keeps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tuner.errors import ConfigError
from tuner.types.routes import TokenRoute

if TYPE_CHECKING:
    import torch

    from tuner_tread.settings import TreadRoute

__all__ = ["TreadRouter", "resolve_routes", "draw_keep_index", "tokens_skipped"]


def _block(index: int, num_blocks: int, where: str) -> int:
    block = index + num_blocks if index < 0 else index
    if not 0 <= block < num_blocks:
        raise ConfigError(
            f"{where} = {index} is outside this model's {num_blocks} blocks"
            f" (use 0..{num_blocks - 1}, or -{num_blocks}..-1 counting from the end)"
        )
    return block


def resolve_routes(routes: Sequence[TreadRoute], num_blocks: int) -> list[tuple[int, int, float]]:
    """``[(start, end, selection_ratio), ...]`` with indices resolved for a stack of ``num_blocks``.

    :raises ConfigError: a route outside the stack, backwards, out of order or
        overlapping the one before it.
    """
    resolved: list[tuple[int, int, float]] = []
    for i, route in enumerate(routes):
        where = f"tread_config.routes[{i}]"
        start = _block(route.start_layer_idx, num_blocks, f"{where}.start_layer_idx")
        end = _block(route.end_layer_idx, num_blocks, f"{where}.end_layer_idx")
        if start > end:
            raise ConfigError(
                f"{where}: start_layer_idx {route.start_layer_idx} (block {start}) comes after end_layer_idx"
                f" {route.end_layer_idx} (block {end}) in this model of {num_blocks} blocks"
            )
        if resolved and start <= resolved[-1][1]:
            raise ConfigError(
                f"{where} (blocks {start}..{end}) does not start after routes[{i - 1}]"
                f" (blocks {resolved[-1][0]}..{resolved[-1][1]}): routes must be in block order and must not overlap"
            )
        resolved.append((start, end, route.selection_ratio))
    return resolved


def tokens_skipped(selection_ratio: float, num_tokens: int) -> int:
    """How many of ``num_tokens`` a route lets skip: ``floor(selection_ratio * num_tokens)``."""
    return math.floor(selection_ratio * num_tokens + 1e-9)  # 0.29 * 100 is 28.999...


def draw_keep_index(
    num_tokens: int,
    batch_size: int,
    selection_ratio: float,
    generator: torch.Generator | None,
    force_keep: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """The ``(batch, kept)`` ascending positions of the tokens that run through a route, or ``None`` if none skip.

    Each sample draws its own random subset. Tokens marked in ``force_keep``
    never skip; when they leave fewer tokens free than the ratio asks for,
    fewer skip, and every sample of the batch skips as many as the most
    constrained one allows (the kept tokens must stack into one tensor).
    """
    import torch

    device = generator.device if generator is not None else torch.device("cpu")
    skip = tokens_skipped(selection_ratio, num_tokens)
    scores = torch.rand(batch_size, num_tokens, generator=generator, device=device)
    if force_keep is not None:
        if tuple(force_keep.shape) != (batch_size, num_tokens):
            raise ValueError(f"force_keep has shape {tuple(force_keep.shape)}, expected {(batch_size, num_tokens)}")
        protected = force_keep.to(device=device, dtype=torch.bool)
        skip = min(skip, num_tokens - int(protected.sum(1).max()))
        scores = scores.masked_fill(protected, 2.0)  # above any draw: always among the kept
    if skip <= 0:
        return None
    return scores.topk(num_tokens - skip, dim=1, sorted=False).indices.sort(dim=1).values


@dataclass(frozen=True)
class TreadRouter:
    """A `tuner.types.routes.TokenRouter` for the configured routes."""

    routes: tuple[TreadRoute, ...]
    option: str = "tread_config"  # named in start-up errors (`tuner.routing.check_routing`)

    def spans(self, num_blocks: int) -> list[tuple[int, int]]:
        return [(start, end) for start, end, _ in resolve_routes(self.routes, num_blocks)]

    def plan(
        self,
        num_blocks: int,
        num_tokens: int,
        batch_size: int,
        generator: torch.Generator | None,
        force_keep: torch.Tensor | None = None,
    ) -> list[TokenRoute]:
        plan = []
        for start, end, ratio in resolve_routes(self.routes, num_blocks):
            keep = draw_keep_index(num_tokens, batch_size, ratio, generator, force_keep)
            if keep is not None:
                plan.append(TokenRoute(start, end, keep))
        return plan

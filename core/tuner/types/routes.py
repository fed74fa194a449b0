"""Token routing: the policy a `route_tokens` plugin returns and the routes it plans."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    import torch

__all__ = ["TokenRoute", "TokenRouter"]


class TokenRoute(NamedTuple):
    """One span of one training forward: which tokens run through it.

    :ivar start: first block of the span (resolved, ``0 <= start``).
    :ivar end: last block of the span, inclusive.
    :ivar keep: ``(batch, kept)`` long tensor, ascending within each row: the
        positions (in the family's routable token sequence) that run through
        blocks ``start..end``. Every other token skips the span and rejoins,
        unchanged and in place, after block ``end``.
    """

    start: int
    end: int
    keep: torch.Tensor


class TokenRouter(Protocol):
    """A policy for which tokens skip which blocks (returned by `route_tokens`).

    The router only decides; the model family carries the plan out: before a
    span it gathers the kept tokens together with everything that travels per
    token (positional encodings, per-token conditioning), runs the span's
    blocks on them, and scatters them back into place after it
    (`tuner.routing.routed_blocks` does all of it around a block stack;
    `tuner.routing.gather_tokens` / `scatter_tokens` by hand). The core
    installs the router as ``bundle.run.router``; a family calls `plan` once
    per training forward and never while validating or at inference.

    Routable tokens are the family's latent (image / video) tokens; text and
    other context tokens are never routed. A router may also carry an
    ``option`` attribute, the config option that sets its routes, which
    start-up errors name.
    """

    def spans(self, num_blocks: int) -> list[tuple[int, int]]:
        """The block spans ``[(start, end), ...]`` (inclusive, in order) for a stack of ``num_blocks``.

        Called by the core at set-up; raise `tuner.errors.ConfigError` when
        the configured spans do not fit a model of this depth.
        """
        ...

    def plan(
        self,
        num_blocks: int,
        num_tokens: int,
        batch_size: int,
        generator: torch.Generator | None,
        force_keep: torch.Tensor | None = None,
    ) -> list[TokenRoute]:
        """Choose the tokens of one forward: one `TokenRoute` per span that skips anything.

        :param num_blocks: the depth of the block stack.
        :param num_tokens: routable tokens per sample.
        :param batch_size: samples in the batch; every sample keeps the same
            number of tokens so the kept ones stack into one tensor.
        :param generator: draw all randomness from it (the one `compute_loss`
            received), so routing repeats exactly when the run does.
        :param force_keep: optional ``(batch, num_tokens)`` bool tensor; tokens
            marked True never skip a span (conditioning frames, the tokens a
            loss mask keeps).
        :return: routes in block order; the ``keep`` tensors live on the
            generator's device.
        """
        ...

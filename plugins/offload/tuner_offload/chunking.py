"""Feed-forward layers run over the tokens in chunks.

A feed-forward layer treats every token on its own, so running it over slices of the sequence and
joining the results gives the same output; only the wide hidden activation (4x the model width and
more) never exists for the whole sequence at once. A size below `MIN_CHUNK_TOKENS` counts samples of
the batch instead, as the guide's (SimpleTuner's) ``feed_forward_chunk_size 2`` does. Installed as a diffusers module hook on each of
diffusers' ``FeedForward`` layers, before the adapter is attached (the adapter's layers sit inside).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from tuner.types.bundle import ModelBundle

__all__ = ["HOOK_NAME", "chunk_size_from_environment", "chunk_feed_forward"]

HOOK_NAME = "tuner_chunked_feed_forward"


def chunk_size_from_environment(family: str) -> tuple[str, int] | None:
    """``<FAMILY>_FEED_FORWARD_CHUNK_SIZE`` (e.g. ``WAN_FEED_FORWARD_CHUNK_SIZE``) as (name, tokens), if set."""
    from tuner.errors import ConfigError

    from tuner_offload.settings import check_chunk_size

    name = f"{family.upper()}_FEED_FORWARD_CHUNK_SIZE"
    raw = os.environ.get(name, "").strip()
    if raw in ("", "0"):  # 0 is SimpleTuner's "off"
        return None
    try:
        return name, check_chunk_size(int(raw))
    except ValueError as exc:
        raise ConfigError(f"environment variable {name}={raw!r}: {exc}") from None


def _hook(size: int) -> Any:
    import torch
    from diffusers.hooks import ModelHook

    from tuner_offload.settings import MIN_CHUNK_TOKENS

    by_samples = size < MIN_CHUNK_TOKENS

    class ChunkedFeedForward(ModelHook):
        def new_forward(self, module: torch.nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            forward = self.fn_ref.original_forward
            if hidden_states.ndim < 2:
                return forward(hidden_states, *args, **kwargs)
            if by_samples:
                # SimpleTuner's rule: a chunk as large as the batch holds half of it; a batch of 1 runs whole.
                batch = hidden_states.shape[0]
                per = size if size < batch else batch // 2
                if per < 1:
                    return forward(hidden_states, *args, **kwargs)
                pieces = hidden_states.split(per, dim=0)
                return torch.cat([forward(piece, *args, **kwargs) for piece in pieces], dim=0)
            if hidden_states.shape[-2] <= size:
                return forward(hidden_states, *args, **kwargs)
            pieces = hidden_states.split(size, dim=-2)  # (..., tokens, width): the token axis
            return torch.cat([forward(piece, *args, **kwargs) for piece in pieces], dim=-2)

    return ChunkedFeedForward()


def chunk_feed_forward(bundle: ModelBundle, tokens: int) -> int:
    """Chunk every diffusers ``FeedForward`` of the denoiser (``tokens`` per chunk; below `MIN_CHUNK_TOKENS`,
    samples per chunk); returns how many there were."""
    from diffusers.hooks import HookRegistry
    from diffusers.models.attention import FeedForward

    from tuner.errors import PluginError

    layers = [m for denoiser in bundle.denoisers() for m in denoiser.modules() if isinstance(m, FeedForward)]
    if not layers:
        raise PluginError(
            f"enable_chunked_feed_forward: the {bundle.family} denoiser has no diffusers FeedForward layers to chunk"
        )
    for layer in layers:
        HookRegistry.check_if_exists_or_initialize(layer).register_hook(_hook(tokens), HOOK_NAME)
    return len(layers)

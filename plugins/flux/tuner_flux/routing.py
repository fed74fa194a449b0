"""Flux's training forward with token routing: the mechanism behind any `TokenRouter`.

`routed_forward` is ``FluxTransformer2DModel.forward`` step for step (input
embedders, time/guidance/pooled-text embedding, RoPE over text + image ids,
the double-stream blocks, then the single-stream blocks, output norm and
projection) except that the router plans over one stack: the double blocks
followed by the single blocks (``ModelBundle.num_blocks`` counts both). Before
a route's first block it gathers the kept image tokens and their RoPE rows
(the text rows stay in front, whole), runs the route's blocks on them through
each block's own forward, and scatters them back after the route's last block.
Text tokens are never routed; both block kinds take and return the text and
image streams separately, so a route may span the switch between them.

diffusers' Flux attention applies one RoPE table to the whole batch, so the
samples of a micro-batch share one plan (drawn as for a batch of one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuner.routing import gather_tokens, run_block, scatter_tokens

if TYPE_CHECKING:
    import torch

    from tuner.types.routes import TokenRouter

__all__ = ["blocks", "routed_forward"]


def blocks(model: Any) -> list[Any]:
    """The routable stack: double-stream blocks, then single-stream blocks."""
    return [*model.transformer_blocks, *model.single_transformer_blocks]


def routed_forward(
    model: Any,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    pooled_projections: torch.Tensor,
    timestep: torch.Tensor,
    img_ids: torch.Tensor,
    txt_ids: torch.Tensor,
    guidance: torch.Tensor | None,
    router: TokenRouter,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The packed output of ``model`` (a ``FluxTransformer2DModel``) with ``router``'s plan carried out.

    Arguments are those of the diffusers forward, plus the router and the generator it draws from.
    """
    import torch

    batch_size, num_tokens = hidden_states.shape[:2]
    hidden_states = model.x_embedder(hidden_states)
    timestep = timestep.to(hidden_states.dtype) * 1000
    if guidance is None:
        temb = model.time_text_embed(timestep, pooled_projections)
    else:
        temb = model.time_text_embed(timestep, guidance.to(hidden_states.dtype) * 1000, pooled_projections)
    encoder_hidden_states = model.context_embedder(encoder_hidden_states)
    text = txt_ids.shape[0]
    cos, sin = model.pos_embed(torch.cat((txt_ids, img_ids), dim=0))  # each (text + image tokens, head_dim)

    stack = blocks(model)
    routes = {route.start: route for route in router.plan(len(stack), num_tokens, 1, generator)}
    rope = full_rope = (cos, sin)
    full = keep = None
    end = -1
    for i, block in enumerate(stack):
        route = routes.get(i)
        if route is not None:
            row = route.keep[0].to(hidden_states.device)
            keep, end, full = row.expand(batch_size, -1), route.end, hidden_states
            hidden_states = gather_tokens(hidden_states, keep)
            rows = torch.cat((torch.arange(text, device=row.device), text + row))
            rope = (cos.index_select(0, rows), sin.index_select(0, rows))
        encoder_hidden_states, hidden_states = run_block(
            model, block, hidden_states, encoder_hidden_states, temb, rope, None
        )
        if i == end:
            hidden_states = scatter_tokens(full, hidden_states, keep)
            rope, full, keep, end = full_rope, None, None, -1

    hidden_states = model.norm_out(hidden_states, temb)
    return model.proj_out(hidden_states)

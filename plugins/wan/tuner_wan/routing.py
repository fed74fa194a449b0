"""Wan's training forward with token routing: the mechanism behind any `TokenRouter`.

`routed_forward` is ``WanTransformer3DModel.forward`` step for step (patch
embedding, RoPE, condition embedder, block loop, output head) except that
before each route's first block it gathers the kept latent tokens together with
what travels per token (their own RoPE cos/sin rows and, for per-token
timesteps as in Wan 2.2 TI2V, their own modulation), runs the route's blocks
on them through each block's own forward, and scatters them back into place
after the route's last block. Text tokens (cross-attention context) are never
routed. The plain diffusers forward stays in use whenever no router is set:
validation, inference and eval.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuner.routing import gather_tokens, run_block, scatter_tokens

if TYPE_CHECKING:
    import torch

    from tuner.types import TokenRouter

__all__ = ["routed_forward", "force_keep_tokens"]


def force_keep_tokens(
    latent_shape: tuple[int, ...],
    patch_size: tuple[int, int, int],
    *,
    loss_mask: torch.Tensor | None = None,
    conditioned_frames: int = 0,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """The ``(batch, tokens)`` mask of latent tokens a router must never route, or ``None``.

    :param latent_shape: ``(batch, channels, frames, height, width)`` of the latents.
    :param loss_mask: latent-space mask ``(batch, 1 | channels, frames, height,
        width)``; a token is protected when any latent it covers is masked in.
    :param conditioned_frames: leading latent frames that carry conditioning
        (an image-to-video first frame); all their tokens are protected.
    """
    import torch
    import torch.nn.functional as F

    batch, _, frames, height, width = latent_shape
    p_t, p_h, p_w = patch_size
    grid = (frames // p_t, height // p_h, width // p_w)
    keep = torch.zeros(batch, *grid, dtype=torch.bool, device=device)
    if loss_mask is not None:
        pooled = F.max_pool3d((loss_mask != 0).float().amax(1, keepdim=True), patch_size, patch_size)
        keep |= pooled[:, 0].to(keep.device).bool()
    if conditioned_frames > 0:
        keep[:, : -(-conditioned_frames // p_t)] = True
    keep = keep.flatten(1)  # the order of patch_embedding(...).flatten(2)
    return keep if bool(keep.any()) else None


def routed_forward(
    model: Any,
    hidden_states: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    router: TokenRouter,
    generator: torch.Generator | None,
    *,
    force_keep: torch.Tensor | None = None,
    encoder_hidden_states_image: torch.Tensor | None = None,
) -> torch.Tensor:
    """The output sample of ``model`` (a ``WanTransformer3DModel``) with ``router``'s plan carried out.

    Arguments are those of the diffusers forward, plus the router, the
    generator it draws from, and an optional ``(batch, tokens)`` mask of
    tokens that must not be routed (see `force_keep_tokens`).
    """
    import torch

    batch_size, _, num_frames, height, width = hidden_states.shape
    p_t, p_h, p_w = model.config.patch_size
    ppf, pph, ppw = num_frames // p_t, height // p_h, width // p_w

    rotary_emb = model.rope(hidden_states)  # (cos, sin), each (1, tokens, 1, head_dim)
    hidden_states = model.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()

    per_token = timestep.ndim == 2  # (batch, tokens): Wan 2.2 TI2V
    ts_seq_len = timestep.shape[1] if per_token else None
    temb, timestep_proj, encoder_hidden_states, encoder_hidden_states_image = model.condition_embedder(
        timestep.flatten() if per_token else timestep,
        encoder_hidden_states,
        encoder_hidden_states_image,
        timestep_seq_len=ts_seq_len,
    )
    # (batch, tokens, 6, dim) per token, else (batch, 6, dim)
    timestep_proj = timestep_proj.unflatten(2 if per_token else 1, (6, -1))
    if encoder_hidden_states_image is not None:
        encoder_hidden_states = torch.concat([encoder_hidden_states_image, encoder_hidden_states], dim=1)

    routes = {
        route.start: route
        for route in router.plan(len(model.blocks), hidden_states.shape[1], batch_size, generator, force_keep)
    }
    rope, proj = rotary_emb, timestep_proj
    full = keep = None
    end = -1
    for i, block in enumerate(model.blocks):
        route = routes.get(i)
        if route is not None:
            keep, end, full = route.keep.to(hidden_states.device), route.end, hidden_states
            hidden_states = gather_tokens(hidden_states, keep)
            rope = (gather_tokens(rotary_emb[0], keep), gather_tokens(rotary_emb[1], keep))
            proj = gather_tokens(timestep_proj, keep) if per_token else timestep_proj
        hidden_states = run_block(model, block, hidden_states, encoder_hidden_states, proj, rope)
        if i == end:
            hidden_states = scatter_tokens(full, hidden_states, keep)
            rope, proj, full, keep, end = rotary_emb, timestep_proj, None, None, -1

    # Output norm, projection and unpatchify, as in diffusers.
    if per_token:
        shift, scale = (model.scale_shift_table.unsqueeze(0).to(temb.device) + temb.unsqueeze(2)).chunk(2, dim=2)
        shift, scale = shift.squeeze(2), scale.squeeze(2)
    else:
        shift, scale = (model.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
    shift, scale = shift.to(hidden_states.device), scale.to(hidden_states.device)
    hidden_states = (model.norm_out(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
    hidden_states = model.proj_out(hidden_states)
    hidden_states = hidden_states.reshape(batch_size, ppf, pph, ppw, p_t, p_h, p_w, -1)
    hidden_states = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return hidden_states.flatten(6, 7).flatten(4, 5).flatten(2, 3)

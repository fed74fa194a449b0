"""Wan's training forward with token routing: the mechanism behind any `TokenRouter`.

`routed_forward` runs ``WanTransformer3DModel``'s own forward inside
`tuner.routing.routed_blocks`: before each route's first block the kept latent
tokens are gathered together with what travels per token (their own RoPE
cos/sin rows and, for per-token timesteps as in Wan 2.2 TI2V, their own
modulation), the route's blocks run on them, and they are scattered back into
place after the route's last block. Text tokens (cross-attention context) are
never routed. The plain diffusers forward stays in use whenever no router is
set: validation, inference and eval.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuner.routing import routed_blocks

if TYPE_CHECKING:
    import torch

    from tuner.types.routes import TokenRouter

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
    batch_size, _, num_frames, height, width = hidden_states.shape
    p_t, p_h, p_w = model.config.patch_size
    tokens = (num_frames // p_t) * (height // p_h) * (width // p_w)
    routes = router.plan(len(model.blocks), tokens, batch_size, generator, force_keep)
    # A block takes (hidden_states, encoder_hidden_states, temb, rotary_emb); temb is per token only
    # for per-token timesteps (batch, tokens): Wan 2.2 TI2V's (batch, tokens, 6, dim) modulation.
    per_token = ("rotary_emb", "temb") if timestep.ndim == 2 else ("rotary_emb",)
    with routed_blocks(model.blocks, routes, per_token=per_token):
        return model(
            hidden_states,
            timestep,
            encoder_hidden_states,
            encoder_hidden_states_image=encoder_hidden_states_image,
            return_dict=False,
        )[0]

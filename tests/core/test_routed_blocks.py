"""`tuner.routing.routed_blocks`: a router's plan carried out on a block stack with module hooks."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tuner.routing import gather_tokens, routed_blocks, scatter_tokens
from tuner.types.routes import TokenRoute


class Block(nn.Module):
    """Mixes tokens (so a block's output depends on which tokens came in) and adds a per-token table."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, hidden_states: torch.Tensor, context: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        mixed = hidden_states + hidden_states.mean(1, keepdim=True)
        return self.proj(mixed) * rope[0] + rope[1] + context


class Stack(nn.Module):
    def __init__(self, depth: int = 4, dim: int = 8, checkpointing: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.checkpointing = checkpointing

    def forward(self, x: torch.Tensor, context: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        for block in self.blocks:
            if self.checkpointing:  # positional arguments, as diffusers' checkpointing passes them
                x = checkpoint(block, x, context, rope, use_reentrant=False)
            else:
                x = block(hidden_states=x, context=context, rope=rope)
        return x


def _inputs(batch: int = 2, tokens: int = 6, dim: int = 8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, tokens, dim, generator=g)
    rope = (torch.randn(batch, tokens, dim, generator=g), torch.randn(batch, tokens, dim, generator=g))
    return x, torch.randn(batch, 1, dim, generator=g), rope


def _by_hand(model: Stack, x, context, rope, route: TokenRoute) -> torch.Tensor:
    for i, block in enumerate(model.blocks):
        if i == route.start:
            full, x = x, gather_tokens(x, route.keep)
        inside = route.start <= i <= route.end
        table = tuple(gather_tokens(t, route.keep) for t in rope) if inside else rope
        x = block(x, context, table)
        if i == route.end:
            x = scatter_tokens(full, x, route.keep)
    return x


def test_a_route_runs_only_the_kept_tokens_through_its_blocks_and_scatters_them_back():
    torch.manual_seed(0)
    model = Stack()
    x, context, rope = _inputs()
    route = TokenRoute(1, 2, torch.tensor([[0, 2, 5], [1, 3, 4]]))
    plain = model(x, context, rope)
    with routed_blocks(model.blocks, [route], per_token=("rope",)):
        routed = model(x, context, rope)
    assert torch.allclose(routed, _by_hand(model, x, context, rope, route))
    assert not torch.allclose(routed, plain), "routing changed nothing"
    assert torch.equal(model(x, context, rope), plain), "the blocks are back after the with block"
    assert all(type(block) is Block for block in model.blocks)


def test_keeping_every_token_changes_nothing_and_checkpointing_gets_the_same_gradients():
    torch.manual_seed(0)
    model = Stack(checkpointing=True)
    x, context, rope = _inputs()
    everything = TokenRoute(0, 3, torch.arange(6).repeat(2, 1))
    plain = model(x, context, rope)
    with routed_blocks(model.blocks, [everything], per_token=("rope",)):
        assert torch.allclose(model(x, context, rope), plain)

    route = TokenRoute(1, 2, torch.tensor([[0, 2, 5], [1, 3, 4]]))
    grads = []
    for checkpointing in (False, True):
        model.checkpointing = checkpointing
        model.zero_grad()
        with routed_blocks(model.blocks, [route], per_token=("rope",)):
            loss = model(x, context, rope).square().sum()
        loss.backward()  # after the with, as a trainer does: checkpointing recomputes the routed blocks here
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
    assert grads[0][2].abs().sum() > 0, "the routed blocks get gradients"

"""The toy family's model: a per-pixel MLP denoiser and a hash for a text encoder (imports torch)."""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

TEXT_DIM = 8

__all__ = ["TEXT_DIM", "ToyDenoiser", "toy_prompt_vector"]


class ToyDenoiser(nn.Module):
    """A per-pixel MLP conditioned on the noise level and a prompt vector."""

    def __init__(self, channels: int = 3, hidden: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(channels + 1 + TEXT_DIM, hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        # Inputs in the base's storage dtype, as a real family feeds them (autocast, when on, picks the compute dtype).
        dtype = self.out.weight.dtype
        x, sigma, text = x.to(dtype), sigma.to(dtype), text.to(dtype)
        b, c, f, h, w = x.shape
        pixels = x.permute(0, 2, 3, 4, 1).reshape(b, -1, c)
        cond = torch.cat([sigma.view(b, 1, 1).expand(b, pixels.shape[1], 1), text[:, None].expand(-1, pixels.shape[1], -1)], -1)
        y = self.out(F.silu(self.mid(F.silu(self.inp(torch.cat([pixels, cond], -1))))))
        return y.view(b, f, h, w, c).permute(0, 4, 1, 2, 3)


def toy_prompt_vector(prompt: str) -> torch.Tensor:
    """The toy text encoder: ``TEXT_DIM`` numbers drawn from the prompt's hash."""
    digest = hashlib.sha256(prompt.encode()).digest()
    return torch.tensor([b / 127.5 - 1 for b in digest[:TEXT_DIM]])

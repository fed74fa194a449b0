"""CREPA's maths as pure functions: the projector, the cross-frame alignment score and the weight schedule.

For every frame ``f`` of a clip the projected hidden states are compared with
the teacher's patch features of frames ``f - d .. f + d`` (``d`` =
``crepa_adjacent_distance``): the similarity of two frames is the mean cosine
similarity of their patches, and a neighbour ``k`` frames away weighs
``exp(-k / tau)``. A frame's score is the weighted mean over its neighbours
that exist (the first and last frames have fewer), the clip's the mean over
frames, the loss ``1 - score``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from tuner_crepa.settings import CrepaSection

__all__ = ["make_projector", "to_teacher_grid", "cross_frame_alignment", "crepa_weight"]


def make_projector(hidden_size: int, teacher_size: int, seed: int) -> torch.nn.Module:
    """LayerNorm -> Linear from the block's width to the teacher's, float32, initialised from ``seed``.

    Its own generator: drawing from the global one would change every random
    number the run draws after it, and a run with ``crepa_lambda = 0`` must
    train exactly as one without CREPA.
    """
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws from the global generator
        projector = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, teacher_size))
    generator = torch.Generator().manual_seed(seed)
    linear = projector[1]
    bound = 1.0 / math.sqrt(hidden_size)  # nn.Linear's default range
    with torch.no_grad():
        linear.weight.uniform_(-bound, bound, generator=generator)
        linear.bias.uniform_(-bound, bound, generator=generator)
    return projector.float()


def to_teacher_grid(tokens: torch.Tensor, grid: tuple[int, int, int], patches: tuple[int, int]) -> torch.Tensor:
    """Projected tokens ``(B, frames*h*w, D)`` (frame-major) -> ``(B, frames, ph*pw, D)`` on the teacher's patch grid.

    Bilinear resampling of each frame's token map, so a token and the teacher
    patch covering the same part of the frame meet.
    """
    import torch.nn.functional as F

    b, _, d = tokens.shape
    frames, h, w = grid
    maps = tokens.reshape(b * frames, h, w, d).permute(0, 3, 1, 2)
    if (h, w) != patches:
        maps = F.interpolate(maps, size=patches, mode="bilinear", align_corners=False, antialias=True)
    return maps.permute(0, 2, 3, 1).reshape(b, frames, patches[0] * patches[1], d)


def cross_frame_alignment(
    student: torch.Tensor, teacher: torch.Tensor, distance: int, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(score, same_frame)`` for ``(B, F, P, D)`` student and teacher features on the same grid.

    ``score`` is the ``(B,)`` distance-weighted cross-frame similarity (what
    the loss maximises); ``same_frame`` the ``(B,)`` mean cosine similarity of
    each frame with its own teacher frame (the alignment reported in logs).
    """
    import torch
    import torch.nn.functional as F

    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    frames = s.shape[1]
    num = s.new_zeros(s.shape[:2])
    den = s.new_zeros(s.shape[:2])
    same = None
    for offset in range(-distance, distance + 1):
        lo, hi = max(0, -offset), min(frames, frames - offset)
        if hi <= lo:  # a clip shorter than the offset
            continue
        sim = (s[:, lo:hi] * t[:, lo + offset : hi + offset]).sum(-1).mean(-1)  # (B, frames in range)
        weight = math.exp(-abs(offset) / tau)
        pad = (lo, frames - hi)
        num = num + F.pad(sim * weight, pad)
        den = den + F.pad(torch.full_like(sim, weight), pad)
        if offset == 0:
            same = sim.mean(1)
    assert same is not None
    return (num / den).mean(1), same


def crepa_weight(section: CrepaSection, step: int, total_steps: int) -> float:
    """The term's weight at optimizer step ``step`` (0-based) of ``total_steps``: warm-up, decay, cut-off."""
    if section.crepa_cutoff_step and step >= section.crepa_cutoff_step:
        return 0.0
    base, end = section.crepa_lambda, section.crepa_lambda_end
    warmup = section.crepa_warmup_steps
    if warmup and step < warmup:
        return base * step / warmup
    if section.crepa_scheduler == "constant":
        return base
    span = section.crepa_decay_steps or max(1, total_steps - warmup)
    p = min(1.0, max(0.0, (step - warmup) / span))
    if section.crepa_scheduler == "linear":
        return base + (end - base) * p
    if section.crepa_scheduler == "cosine":
        return end + (base - end) * 0.5 * (1.0 + math.cos(math.pi * p))
    return end + (base - end) * (1.0 - p) ** section.crepa_power

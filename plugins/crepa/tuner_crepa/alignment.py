"""CREPA's maths as pure functions: the projector, the cross-frame alignment score and the weight schedule.

For every frame ``f`` of a clip the projected hidden states are compared with
the teacher's patch features of frames ``f - d .. f + d`` (``d`` =
``crepa_adjacent_distance``): the similarity of two frames is the mean cosine
similarity of their patches, and a neighbour ``k`` frames away weighs
``exp(-k / tau)``. A frame's score is the weighted mean over its neighbours
that exist (the first and last frames have fewer), the clip's the mean over
frames, the loss ``1 - score``.

How it is computed, per step: the student's patches are normalised, one
batched matrix product gives every frame pair's summed cosine similarity (a
``frames x frames`` Gram matrix per clip), and a constant weight matrix
(`neighbour_weights`, built once per clip length) turns it into the score.
The teacher's patches are unit vectors already (normalised when they are
cached), so a step does no work on them but a dtype cast.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from tuner_crepa.settings import CrepaSection

__all__ = [
    "make_projector",
    "project",
    "unit_patches",
    "to_teacher_grid",
    "neighbour_weights",
    "cross_frame_alignment",
    "crepa_weight",
]


def make_projector(hidden_size: int, teacher_size: int, seed: int) -> torch.nn.Module:
    """LayerNorm -> Linear from the block's width to the teacher's, float32, initialised from ``seed``.

    The LayerNorm has no scale and shift of its own: the Linear after it can
    already express any (they would fold into its weight and bias), so they
    would only be two more tensors to optimise, clip and checkpoint each step.
    Its own generator: drawing from the global one would change every random
    number the run draws after it, and a run with ``crepa_lambda = 0`` must
    train exactly as one without CREPA.
    """
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws from the global generator
        projector = nn.Sequential(nn.LayerNorm(hidden_size, elementwise_affine=False), nn.Linear(hidden_size, teacher_size))
    generator = torch.Generator().manual_seed(seed)
    linear = projector[1]
    bound = 1.0 / math.sqrt(hidden_size)  # nn.Linear's default range
    with torch.no_grad():
        linear.weight.uniform_(-bound, bound, generator=generator)
        linear.bias.uniform_(-bound, bound, generator=generator)
    return projector.float()


def project(projector: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``projector`` (`make_projector`) on block hidden states of any precision; float32 out.

    The LayerNorm takes them as they are (it computes in float32 inside), so
    only its output is copied to float32 for the Linear: one full-width copy
    instead of two when the model runs in bf16 or fp16.
    """
    norm, linear = projector[0], projector[1]
    return linear(norm(hidden).float())


def unit_patches(features: torch.Tensor) -> torch.Tensor:
    """``features`` scaled to unit length along the last (feature) dim: a patch's direction is what cosines compare."""
    import torch.nn.functional as F

    return F.normalize(features, dim=-1)


def to_teacher_grid(tokens: torch.Tensor, grid: tuple[int, int, int], patches: tuple[int, int]) -> torch.Tensor:
    """Projected tokens ``(B, frames*h*w, D)`` (frame-major) -> ``(B, frames, ph*pw, D)`` on the teacher's patch grid.

    Bilinear resampling of each frame's token map, so a token and the teacher
    patch covering the same part of the frame meet; when the grids agree it is
    a view, no copy.
    """
    import torch.nn.functional as F

    b, _, d = tokens.shape
    frames, h, w = grid
    if (h, w) == tuple(patches):
        return tokens.view(b, frames, h * w, d)
    maps = tokens.reshape(b * frames, h, w, d).permute(0, 3, 1, 2)
    maps = F.interpolate(maps, size=tuple(patches), mode="bilinear", align_corners=False, antialias=True)
    return maps.permute(0, 2, 3, 1).reshape(b, frames, patches[0] * patches[1], d)


def neighbour_weights(frames: int, patches: int, distance: int, tau: float) -> torch.Tensor:
    """The ``(frames, frames)`` float32 matrix that turns a clip's Gram matrix into its score.

    ``W[f, g] = exp(-|f - g| / tau)`` for ``|f - g| <= distance``, 0 beyond;
    each row divided by its sum (the neighbours frame ``f`` has), by the frames
    (the clip's mean) and by the patches (sums of cosines -> means). A constant
    of the clip's shape and the options: the caller keeps it.
    """
    import torch

    index = torch.arange(frames, dtype=torch.float64)
    gap = (index[:, None] - index[None, :]).abs()
    weights = torch.where(gap <= distance, torch.exp(-gap / tau), torch.zeros_like(gap))
    weights = weights / weights.sum(1, keepdim=True) / (frames * patches)
    return weights.float()


def cross_frame_alignment(
    student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(score, same_frame)`` for ``(B, F, P, D)`` student features and unit teacher features on the same grid.

    ``teacher`` holds unit vectors (`unit_patches`; the cache stores them so);
    ``weights`` is `neighbour_weights` of ``(F, P, distance, tau)``. ``score``
    is the ``(B,)`` distance-weighted cross-frame similarity (what the loss
    maximises, differentiable); ``same_frame`` the ``(B,)`` mean cosine
    similarity of each frame with its own teacher frame (the alignment reported
    in logs, without gradient).
    """
    import torch

    frames, patches = student.shape[1], student.shape[2]
    s = unit_patches(student.float()).flatten(2)  # (B, F, P*D)
    t = teacher.to(s.dtype).flatten(2)
    gram = torch.bmm(s, t.transpose(1, 2))  # (B, F, F): summed patch cosines of student frame f, teacher frame g
    score = (gram * weights).sum((1, 2))
    same = gram.detach().diagonal(dim1=1, dim2=2).sum(1) / (frames * patches)
    return score, same


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

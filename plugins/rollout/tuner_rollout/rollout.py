"""The input rewrite of scheduled sampling (`tuner.train.noising.InputRewriter`), and ReflexFlow's objective.

For each sample of a micro-batch, drawn from the micro-batch's generator: is it
rolled out (the step's probability), and from how many steps before its
training sigma (1 to ``max_step_offset``). A rolled-out sample starts at
``sigma_start = sigma + k / 1000`` (kept inside the trained experts' range) on
the noise the family drew, and the model denoises it, without gradient, down to
``sigma`` with the chosen solver; that latent replaces the sample's noisy input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.train.noising import NoisyInputs

if TYPE_CHECKING:
    import torch

    from tuner.train.noising import Predict

    from tuner_rollout.settings import RolloutSection

__all__ = ["Rollout", "reflexflow_errors"]


class Rollout:
    """Installed once (``RunSlots.input_rewriter``); draws everything from the micro-batch's generator."""

    def __init__(self, section: RolloutSection, sigma_range: tuple[float, float]) -> None:
        self.section = section
        self.sigma_range = sigma_range

    def _ceiling(self) -> float:
        """The noisiest start allowed: inside the trained experts' range (half-open below 1), in float32 (the
        levels reach the model as float32: a start that rounds onto the boundary would go to the next expert),
        and no higher than the noisiest training timestep, 999/1000 (UniPC's log-SNR is infinite at 1)."""
        import torch

        from tuner_rollout.settings import TRAIN_TIMESTEPS

        top = 1.0 - 1.0 / TRAIN_TIMESTEPS
        high = torch.tensor(min(self.sigma_range[1], top), dtype=torch.float32)
        if high.item() >= self.sigma_range[1]:  # half-open: the boundary itself belongs to the next expert
            high = high.nextafter(torch.tensor(0.0))
        return float(high)

    def rewrite(self, plain: NoisyInputs, predict: Predict, generator: torch.Generator, step: int) -> NoisyInputs:
        import torch

        from tuner_rollout.settings import TRAIN_TIMESTEPS
        from tuner_rollout.solvers import integrate

        s = self.section
        batch = plain.x0.shape[0]
        # One number from the family's generator seeds the rollout's own: its draws are then the same
        # count whatever is chosen, and a resumed run draws what the uninterrupted one drew.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        own = torch.Generator().manual_seed(seed)
        chosen = torch.rand(batch, generator=own) < s.probability(step)
        offsets = torch.randint(1, s.scheduled_sampling_max_step_offset + 1, (batch,), generator=own)
        ceiling = self._ceiling()
        noisy, rolled, forwards = plain.noisy.clone(), [], 0
        for row in range(batch):
            sigma = float(plain.sigmas[row])
            start = min(sigma + int(offsets[row]) / TRAIN_TIMESTEPS, ceiling)
            if not chosen[row] or start <= sigma:
                continue
            k = int(offsets[row])
            grid = torch.linspace(start, sigma, k + 1, dtype=torch.float64).tolist()
            rows = torch.tensor([row], device=plain.x0.device)
            x0, noise = plain.x0[row : row + 1].float(), plain.noise[row : row + 1].float()
            x = (1.0 - start) * x0 + start * noise

            def velocity(y: torch.Tensor, level: float, rows: torch.Tensor = rows) -> torch.Tensor:
                nonlocal forwards
                forwards += 1
                return predict(y.to(plain.noisy.dtype), torch.full((1,), level, device=y.device), rows)

            noisy[row] = integrate(s.scheduled_sampling_sampler, x, grid, velocity)[0].to(noisy.dtype)
            rolled.append(row)
        logs = {"rollout_samples": float(len(rolled)), "rollout_forwards": float(forwards)}
        if not rolled:
            return plain.with_input(plain.noisy, **logs)
        objective = None
        if s.scheduled_sampling_reflexflow:
            index = torch.tensor(rolled, device=plain.x0.device)
            # The prediction on the ideal input (no rollout): ReflexFlow's exposure bias is the difference.
            clean = predict(plain.noisy[index], plain.sigmas[index], index).float()
            logs["rollout_forwards"] += len(rolled)
            objective = _ReflexFlow(plain, noisy, index, clean, s)
        return plain.with_input(noisy, objective, **logs)


class _ReflexFlow:
    """Per-sample errors: plain velocity MSE for samples not rolled out, ReflexFlow's for the others."""

    def __init__(
        self, plain: NoisyInputs, noisy: torch.Tensor, rows: torch.Tensor, clean: torch.Tensor, s: RolloutSection
    ) -> None:
        self.plain, self.noisy, self.rows, self.clean, self.s = plain, noisy, rows, clean, s

    def __call__(self, pred: torch.Tensor, loss_mask: torch.Tensor | None) -> torch.Tensor:
        from tuner.train.timesteps import velocity_errors

        errors = velocity_errors(pred, self.plain.x0, self.plain.noise, loss_mask)
        p, rows = self.plain, self.rows
        mask = None if loss_mask is None else loss_mask.expand_as(p.x0)[rows]
        rolled = reflexflow_errors(
            pred[rows], p.x0[rows], p.noise[rows], self.noisy[rows], self.clean, mask,
            alpha=self.s.scheduled_sampling_reflexflow_alpha, beta1=self.s.scheduled_sampling_reflexflow_beta1,
            beta2=self.s.scheduled_sampling_reflexflow_beta2,
        )  # fmt: skip
        return errors.index_put((rows,), rolled)


def reflexflow_errors(
    pred: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    noisy: torch.Tensor,
    clean_pred: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    alpha: float,
    beta1: float,
    beta2: float,
) -> torch.Tensor:
    """ReflexFlow's per-sample loss of rolled-out samples: ``beta2 * FC + beta1 * ADR``.

    FC (frequency compensation): the velocity MSE against ``noise - x0``, each latent
    weighted ``1 + alpha * b / mean(b)``, ``b`` the exposure bias ``|pred - clean_pred|``
    (how far the rollout moved the prediction; no gradient through it). ADR
    (anti-drift rectification): the squared distance between the unit directions of
    ``pred`` and of ``noisy - x0``, the velocity that carries the biased input back to
    the clean latents.
    """
    import torch
    import torch.nn.functional as F

    pred, x0, noise, noisy = pred.float(), x0.float(), noise.float(), noisy.float()
    keep = torch.ones_like(x0) if mask is None else mask.to(x0.dtype).expand_as(x0)
    bias = (pred.detach() - clean_pred.float()).abs() * keep
    mean = (bias.flatten(1).sum(1) / keep.flatten(1).sum(1).clamp_min(1)).clamp_min(1e-12)
    weight = 1.0 + alpha * bias / mean.view(-1, *([1] * (bias.ndim - 1)))
    err = (weight * (pred - (noise - x0))).pow(2) * keep
    fc = err.flatten(1).sum(1) / keep.flatten(1).sum(1).clamp_min(1)
    direction = F.normalize((pred * keep).flatten(1), dim=1, eps=1e-6)
    anti_drift = F.normalize(((noisy - x0) * keep).flatten(1), dim=1, eps=1e-6)
    adr = (direction - anti_drift).pow(2).sum(1)
    return beta2 * fc + beta1 * adr

"""Wan's objective at given noise levels, per sample: the evaluation loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.train.experts import run_experts
from tuner.train.timesteps import add_noise, draw_noise, velocity_errors as errors

if TYPE_CHECKING:
    import torch

    from tuner.types.bundle import ModelBundle

__all__ = ["velocity_errors"]


def velocity_errors(
    bundle: ModelBundle, batch: dict[str, torch.Tensor], sigmas: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Per-sample MSE of the predicted velocity ``noise - x0``, as `flow_matching_loss` computes it, at ``sigmas``."""
    from tuner_wan.conditioning import model_inputs

    x0 = batch["latents"].float()
    noise = draw_noise(x0, generator)
    noisy = add_noise(x0, noise, sigmas.to(x0.device))
    # Every TI2V sample is evaluated with its first frame given (no text-only draw): a stable figure.
    inputs = model_inputs(bundle, batch, noisy, sigmas)
    pred = run_experts(bundle, sigmas, inputs.kwargs, lambda model, part: model(**part, return_dict=False)[0])
    return errors(pred, x0, noise, inputs.loss_mask)

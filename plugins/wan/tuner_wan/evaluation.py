"""Wan's objective at given noise levels, per sample: the evaluation loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.train.timesteps import add_noise

from tuner_wan.experts import run_experts

if TYPE_CHECKING:
    import torch

    from tuner.types import ModelBundle

__all__ = ["velocity_errors"]


def velocity_errors(
    bundle: ModelBundle, batch: dict[str, torch.Tensor], sigmas: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Per-sample MSE of the predicted velocity ``noise - x0``, as `flow_matching_loss` computes it, at ``sigmas``."""
    import torch

    x0 = batch["latents"].float()
    noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
    noisy = add_noise(x0, noise, sigmas.to(x0.device))
    dtype = bundle.components["dtype"]
    inputs = {
        "hidden_states": noisy.to(dtype),
        "timestep": sigmas.to(x0.device) * 1000.0,
        "encoder_hidden_states": batch["prompt_embeds"].to(dtype),
    }
    pred = run_experts(bundle, sigmas, inputs, lambda model, part: model(**part, return_dict=False)[0])
    return (pred.float() - (noise - x0)).pow(2).flatten(1).mean(1)

"""Wan's flow-matching training objective."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.train.experts import run_experts
from tuner.train.noising import noisy_inputs
from tuner.train.timesteps import draw_noise, training_sigmas
from tuner.types.training import LossOutput

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig
    from tuner.types.bundle import ModelBundle

__all__ = ["flow_matching_loss"]


def flow_matching_loss(
    bundle: ModelBundle, batch: dict[str, torch.Tensor], generator: torch.Generator, config: RunConfig
) -> LossOutput:
    """noisy = (1 - s) x0 + s noise; the transformer predicts the velocity noise - x0 at t = 1000 s."""
    import torch

    from tuner_wan.conditioning import model_inputs, text_only_draw

    x0 = batch["latents"].float()
    vae = bundle.components["vae"].config
    pixel_area = x0.shape[-1] * x0.shape[-2] * vae.scale_factor_spatial**2
    # Only the noise levels of the experts being trained (all of them for a single transformer).
    sigmas = training_sigmas(config, x0.shape[0], generator, pixel_area, x0.device, bundle.sigma_range())
    # Read before the forward is queued: on an accelerator, reading after it would wait for the forward.
    logs = {"sigma_mean": float(sigmas.mean())}
    noise = draw_noise(x0, generator)
    # Image conditioning (I2V, TI2V) lives in tuner_wan.conditioning: the transformer's inputs, and
    # which latents the loss counts (TI2V's clean first frame does not) and the router must keep.
    text_only = text_only_draw(bundle.components["conditioning"], x0.shape[0], generator)

    def predict(x: torch.Tensor, levels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        # Lent to a feature that rewrites the input (scheduled sampling): these rows' conditioning, each
        # level run by the expert that owns it, no routing (the core unsets the router meanwhile).
        part = {k: v.index_select(0, rows.to(v.device)) for k, v in batch.items()}
        only = None if text_only is None else text_only.index_select(0, rows.to(text_only.device))
        kwargs = model_inputs(bundle, part, x, levels, text_only=only).kwargs
        return run_experts(bundle, levels, kwargs, lambda t, p: t(**p, return_dict=False)[0])

    # The core's noising: (1 - s) x0 + s noise, or a feature's rewrite of it.
    noised = noisy_inputs(bundle, x0, noise, sigmas, generator, predict)
    logs.update(noised.logs)
    inputs = model_inputs(bundle, batch, noised.noisy, sigmas, text_only=text_only)
    router = bundle.run.router

    def forward(transformer: torch.nn.Module, part: dict[str, torch.Tensor]) -> torch.Tensor:
        part = dict(part)
        force_keep = part.pop("force_keep", None)  # split per expert with the rest of the batch
        if router is not None and transformer.training:
            from tuner_wan.routing import routed_forward

            # The model's own forward (under accelerate's autocast) with the plan carried out on its blocks.
            # The router draws after the noise, so routing changes neither the noise nor the timesteps.
            return routed_forward(transformer, **part, router=router, generator=generator, force_keep=force_keep)
        return transformer(**part, return_dict=False)[0]

    kwargs = inputs.kwargs if inputs.force_keep is None else {**inputs.kwargs, "force_keep": inputs.force_keep}
    pred = run_experts(bundle, sigmas, kwargs, forward)
    loss = noised.errors(pred, inputs.loss_mask).mean()
    return LossOutput(loss=loss, logs=logs, sigmas=sigmas)

"""Rendering validation images with the trained transformer, through FluxPipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.errors import PluginError
from tuner.types import ValidationResult

if TYPE_CHECKING:
    from tuner.types import ModelBundle, ValidationRequest

__all__ = ["render_validation"]


def render_validation(bundle: ModelBundle, request: ValidationRequest) -> ValidationResult:
    """One image per prompt, ``(1, H, W, 3)`` in [0, 1]; the core writes the files and the contact sheet.

    ``validation_guidance`` is the guidance embedding's value on dev (FluxPipeline's
    ``guidance_scale``); schnell has none and ignores it. Each prompt starts from a
    generator seeded with the request's seed.
    """
    import torch

    if request.skip_layer_guidance is not None:
        raise PluginError("validation_guidance_skip_layers: the Flux family does not support skip-layer guidance")
    pipe = bundle.components["pipeline"]
    result = ValidationResult(step=request.step)
    device = pipe._execution_device  # where the pipeline runs; networks may sit in CPU memory between uses
    for key, prompt in request.prompts.items():
        images = pipe(
            prompt=prompt,
            height=request.height,
            width=request.width,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            generator=torch.Generator(device).manual_seed(request.seed),
            max_sequence_length=bundle.components["max_sequence_length"],
            output_type="np",
        ).images
        result.frames[key] = images[:1]
    return result

"""Rendering validation clips with the trained transformer, through WanPipeline's parts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.types import ValidationResult

if TYPE_CHECKING:
    from tuner.types import ModelBundle, ValidationRequest

__all__ = ["render_validation"]


def render_validation(bundle: ModelBundle, request: ValidationRequest) -> ValidationResult:
    """Frames for every prompt of the request; the core writes the files."""
    from tuner_wan.sampling import make_scheduler, sample_clip

    parts = bundle.components
    pipe = parts["pipeline"]
    scheduler = make_scheduler(parts["validation_sampler"], pipe.scheduler)
    result = ValidationResult(step=request.step)
    experts = {expert.name: expert for expert in bundle.experts}

    def enter(component: str) -> None:
        if component in experts:
            bundle.enter(experts[component])

    for key, prompt in request.prompts.items():
        result.frames[key] = sample_clip(
            pipe, request, prompt, scheduler, parts["max_sequence_length"], parts.get("validation_guidance_2"), enter
        )
    return result

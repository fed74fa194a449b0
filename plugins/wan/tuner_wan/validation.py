"""Rendering validation clips with the trained transformer, through WanPipeline's parts."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tuner.types.validation import ValidationResult

if TYPE_CHECKING:
    from tuner.types.bundle import ModelBundle
    from tuner.types.validation import ValidationRequest

__all__ = ["render_validation"]


def render_validation(bundle: ModelBundle, request: ValidationRequest) -> ValidationResult:
    """The frames of the request's clip; the core writes the files."""
    from tuner_wan.sampling import decode_preview, make_scheduler, sample_clip

    parts = bundle.components
    pipe = parts["pipeline"]
    scheduler = make_scheduler(parts["validation_sampler"], pipe.scheduler)
    result = ValidationResult(step=request.step)
    experts = {expert.name: expert for expert in bundle.experts}

    def enter(component: str) -> None:
        if component in experts:
            bundle.enter(experts[component])

    key = request.key
    start = first_frame_factory(bundle, request)
    previews: dict[int, Any] = {}

    def step_end(step: int, x0: Any) -> None:
        if step in request.preview_steps:
            previews[step] = decode_preview(pipe, x0)
            if request.on_preview is not None:  # written and sent now, while the sampler runs on
                request.on_preview(key, step, previews[step])
        if request.on_sampler_step is not None:  # the round's progress, step by step
            request.on_sampler_step()

    result.frames[key] = sample_clip(
        pipe,
        request,
        request.prompt,
        scheduler,
        parts["max_sequence_length"],
        parts.get("validation_guidance_2"),
        enter,
        start,
        step_end if request.preview_steps or request.on_sampler_step is not None else None,
    )
    if request.preview_steps:
        result.preview_frames[key] = previews
    return result


def first_frame_factory(bundle: ModelBundle, request: ValidationRequest) -> Callable[[Any], Any] | None:
    """Image-to-video: a callable making the clip's `FirstFrameStart` from the sampler's generator; else ``None``."""
    from tuner.errors import PluginError

    cond = bundle.components["conditioning"]
    if not cond.image_conditioned:
        return None
    if request.conditioning_frames is None:
        raise PluginError(f"wan: validation prompt '{request.key}' has no first frame, and this model starts from one")
    from tuner_wan.i2v_sampling import first_frame_start

    frames = request.conditioning_frames
    i2v = bundle.components["i2v_pipeline"]
    return lambda generator: first_frame_start(
        i2v, cond, frames, request.height, request.width, request.num_frames, generator
    )

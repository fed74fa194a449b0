"""Rendering validation clips with diffusers' WanPipeline, adapter applied."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.types import ValidationResult
from tuner.validate.media import safe_filename, write_image, write_video

if TYPE_CHECKING:
    from tuner.types import ModelBundle, ValidationRequest

__all__ = ["render_validation"]


def render_validation(bundle: ModelBundle, request: ValidationRequest) -> ValidationResult:
    import torch

    pipe = bundle.components["pipeline"]
    result = ValidationResult(step=request.step)
    for nickname, prompt in request.prompts.items():
        generator = torch.Generator(pipe.transformer.device).manual_seed(request.seed)
        frames = pipe(
            prompt=prompt,
            negative_prompt=request.negative_prompt,
            height=request.height,
            width=request.width,
            num_frames=request.num_frames,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            generator=generator,
            output_type="np",
            max_sequence_length=bundle.components["max_sequence_length"],
        ).frames[0]
        name = safe_filename(nickname)
        if len(frames) == 1:
            result.media[nickname] = write_image(frames[0], request.output_dir / f"{name}.png")
        else:
            result.media[nickname] = write_video(frames, request.output_dir / f"{name}.mp4", fps=request.fps)
    return result

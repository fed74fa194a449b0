"""The ``[validation]`` config section: what the model renders while it trains."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["ValidationSection", "parse_size"]

_STRICT = ConfigDict(extra="forbid", validate_assignment=True)


def parse_size(value: str) -> tuple[int, int]:
    """``"832x480"`` -> ``(832, 480)`` (width, height)."""
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise ValueError(f"expected WIDTHxHEIGHT such as 832x480, got '{value}'") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"width and height must be positive, got '{value}'")
    return w, h


class ValidationSection(BaseModel):
    """What the model renders while it trains, so a person can judge it."""

    model_config = _STRICT

    validation_prompt: str | None = Field(None, description="Prompt rendered at each validation; unset: no validation.")
    validation_negative_prompt: str = Field("", description="Negative prompt for classifier-free guidance.")
    validation_step_interval: int = Field(
        0, ge=0, description="Validate every N optimizer steps; 0 validates only at the end of the run."
    )
    validation_num_inference_steps: int = Field(30, ge=1, description="Sampler steps per validation clip.")
    validation_num_video_frames: int = Field(17, ge=1, description="Frames per validation clip.")
    validation_resolution: str = Field("832x480", description="Validation size as WIDTHxHEIGHT.")
    validation_guidance: float = Field(5.0, ge=0, description="Classifier-free guidance scale.")
    validation_seed: int = Field(42, description="Noise seed: the same every round, so rounds compare.")
    validation_fps: int = Field(16, ge=1, description="Frame rate of the written videos.")

    @field_validator("validation_resolution")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return value

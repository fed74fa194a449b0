"""The ``[validation]`` and ``[evaluation]`` config sections.

``[validation]`` says what the model renders while it trains (prompts, sizes,
sampler settings, skip-layer guidance); ``[evaluation]`` sets up the stable
evaluation loss. Both are registered by the core's built-in ``core`` plugin.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["ValidationSection", "EvaluationSection", "parse_size", "read_prompt_library"]

_STRICT = ConfigDict(extra="forbid", validate_assignment=True)


def parse_size(value: str) -> tuple[int, int]:
    """``"832x480"`` -> ``(832, 480)`` (width, height)."""
    try:
        w, h = (int(v) for v in value.strip().lower().split("x"))
    except ValueError:
        raise ValueError(f"expected WIDTHxHEIGHT such as 832x480, got '{value}'") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"width and height must be positive, got '{value}'")
    return w, h


def read_prompt_library(path: Path) -> dict[str, str]:
    """A ``user_prompt_library`` file: a JSON object of nickname -> prompt."""
    from tuner.jsonfile import read_json

    data = read_json(path)
    if not isinstance(data, dict) or not data:
        raise ValueError(f'{path}: expected a non-empty JSON object such as {{"nickname": "the prompt"}}')
    bad = [k for k, v in data.items() if not isinstance(v, str) or not v.strip() or not k.strip()]
    if bad:
        raise ValueError(f"{path}: every entry needs a nickname and a non-empty prompt string (see '{bad[0]}')")
    return {str(k): str(v) for k, v in data.items()}


class ValidationSection(BaseModel):
    """What the model renders while it trains, so a person can judge it."""

    model_config = _STRICT

    validation_disable: bool = Field(False, description="Switch validation off entirely, whatever else is set.")
    validation_prompt: str | None = Field(
        None, description="The main prompt, written as main.mp4 each round; unset renders only the prompt libraries."
    )
    user_prompt_library: Path | None = Field(
        None,
        description="A JSON file of nickname -> prompt rendered each round too; nicknames name the files (made safe"
        " for the file system).",
    )
    validation_prompt_library: bool = Field(
        False, description="Also render tuner's built-in library of varied prompts (to spot a model collapsing)."
    )
    validation_negative_prompt: str = Field("", description="Negative prompt for classifier-free guidance.")
    validation_step_interval: int = Field(
        0, ge=0, description="Validate every N optimizer steps; 0 validates only at the end of the run."
    )
    validation_on_startup: bool = Field(
        False, description="Also validate before the first step, as a baseline of the untrained adapter."
    )
    disable_benchmark: bool | None = Field(
        None,
        description="The guide's name for the opposite of validation_on_startup: false renders the step-0 baseline,"
        " true does not. Refused when it contradicts validation_on_startup.",
    )
    validation_num_inference_steps: int = Field(30, ge=1, description="Sampler steps per validation clip.")
    validation_num_video_frames: int = Field(17, ge=1, description="Frames per validation clip (1 renders images).")
    validation_resolution: str | list[str] = Field(
        "832x480",
        description="Validation size as WIDTHxHEIGHT; several as a list or comma-separated ('832x480,480x832')"
        " render every prompt at each.",
    )
    validation_guidance: float = Field(5.0, ge=0, description="Classifier-free guidance scale; 1 or less turns it off.")
    validation_seed: int = Field(42, description="Noise seed: the same noise every round, so rounds compare.")
    validation_fps: int = Field(16, ge=1, description="Frame rate of the written videos.")
    validation_guidance_skip_layers: list[int] | None = Field(
        None,
        description="Skip-layer guidance: blocks skipped in an extra conditional pass whose difference from the"
        " full pass is added to the guided prediction (e.g. [9] for Wan 1.3B). Unset: off.",
    )
    validation_guidance_skip_layers_start: float = Field(
        0.01, ge=0, le=1, description="Fraction of the sampler steps after which skip-layer guidance starts."
    )
    validation_guidance_skip_layers_stop: float = Field(
        0.2, ge=0, le=1, description="Fraction of the sampler steps after which skip-layer guidance stops."
    )
    validation_guidance_skip_scale: float = Field(
        2.8, ge=0, description="Strength of skip-layer guidance (scale of the full-minus-skipped difference)."
    )

    @field_validator("validation_resolution")
    @classmethod
    def _sizes(cls, value: str | list[str]) -> str | list[str]:
        items = value.split(",") if isinstance(value, str) else value
        if not [i for i in items if i.strip()]:
            raise ValueError("give at least one WIDTHxHEIGHT")
        for item in items:
            parse_size(item)
        return value

    @field_validator("user_prompt_library")
    @classmethod
    def _library(cls, value: Path | None) -> Path | None:
        # A relative path is checked once the config resolves it against its
        # own folder (the section is validated again on that assignment).
        if value is not None and value.is_absolute():
            read_prompt_library(value)
        return value

    @field_validator("validation_guidance_skip_layers")
    @classmethod
    def _layers(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            if not value:
                raise ValueError("name at least one block index, or leave it unset to switch skip-layer guidance off")
            if min(value) < 0:
                raise ValueError("block indices count from 0")
        return value

    @property
    def baseline(self) -> bool:
        """Whether a round renders before the first step."""
        return self.validation_on_startup or self.disable_benchmark is False

    @model_validator(mode="after")
    def _benchmark_agrees(self) -> ValidationSection:
        if (
            self.disable_benchmark is not None
            and "validation_on_startup" in self.model_fields_set
            and self.validation_on_startup == self.disable_benchmark
        ):
            raise ValueError(
                f"disable_benchmark = {str(self.disable_benchmark).lower()} contradicts validation_on_startup ="
                f" {str(self.validation_on_startup).lower()}: keep one of them"
            )
        return self

    @model_validator(mode="after")
    def _window(self) -> ValidationSection:
        if self.validation_guidance_skip_layers_stop <= self.validation_guidance_skip_layers_start:
            raise ValueError(
                "validation_guidance_skip_layers_stop must be above validation_guidance_skip_layers_start"
                f" (got {self.validation_guidance_skip_layers_start} .. {self.validation_guidance_skip_layers_stop})"
            )
        return self

    def sizes(self) -> list[tuple[int, int]]:
        """Every validation size, as ``(width, height)``, in the order given, without repeats."""
        items = self.validation_resolution
        items = items.split(",") if isinstance(items, str) else items
        return list(dict.fromkeys(parse_size(i) for i in items if i.strip()))


class EvaluationSection(BaseModel):
    """The stable evaluation loss: MSE at fixed noise levels and fixed noise on held-out samples."""

    model_config = _STRICT

    eval_steps_interval: int = Field(
        0, ge=0, description="Compute the evaluation loss every N optimizer steps (and at the end); 0 turns it off."
    )
    eval_split: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Fraction of the training samples held out (never trained on) for the evaluation loss; at least"
        " one sample when above 0. The choice depends only on the seed, so a resumed run holds out the same ones.",
    )
    eval_dataset_id: str | None = Field(
        None,
        description="A dataset of the backend file (its id) held out whole for the evaluation loss: it is cached but never"
        " trained on, and its buckets are never pruned. The alternative to eval_split.",
    )
    eval_timesteps: int = Field(
        8, ge=1, le=1000, description="Noise levels the evaluation loss averages over, evenly spaced in (0, 1)."
    )
    eval_batch_size: int = Field(4, ge=1, description="Noise levels of one sample evaluated together.")
    eval_seed: int = Field(0, description="Seed of the evaluation noise: the same every time, so the loss compares.")

    @model_validator(mode="after")
    def _needs_samples(self) -> EvaluationSection:
        if self.eval_split and self.eval_dataset_id:
            raise ValueError("set either eval_split or eval_dataset_id, not both: they are two ways to hold samples out")
        if self.eval_steps_interval and not (self.eval_split or self.eval_dataset_id):
            raise ValueError(
                "eval_steps_interval needs held-out samples: set eval_split (e.g. 0.1) or eval_dataset_id (a dataset id)"
            )
        for name in ("eval_split", "eval_dataset_id"):
            if getattr(self, name) and not self.eval_steps_interval:
                raise ValueError(f"{name} holds samples out of training for nothing: set eval_steps_interval too")
        return self

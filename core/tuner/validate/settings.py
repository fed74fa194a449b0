"""The ``[validation]`` and ``[evaluation]`` config sections.

``[validation]`` says what the model renders while it trains (prompts, sizes,
sampler settings, skip-layer guidance); ``[evaluation]`` sets up the stable
evaluation loss. Both are registered by the core's built-in ``core`` plugin.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tuner.data.sizing import MAX_SIDE

__all__ = ["ValidationSection", "EvaluationSection", "parse_size", "read_prompt_library", "read_prompt_images"]

# allow_inf_nan=False: no option here means anything with inf or nan (a learning rate, a shift, a size).
_STRICT = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def parse_size(value: str) -> tuple[int, int]:
    """``"832x480"`` -> ``(832, 480)`` (width, height)."""
    try:
        w, h = (int(v) for v in value.strip().lower().split("x"))
    except ValueError:
        raise ValueError(f"expected WIDTHxHEIGHT such as 832x480, got '{value}'") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"width and height must be positive, got '{value}'")
    if max(w, h) > MAX_SIDE:
        raise ValueError(f"width and height must be at most {MAX_SIDE} pixels, got '{value}'")
    return w, h


_IMAGE_KEYS = ("image", "last_image")


def _library_entries(path: Path) -> dict[str, dict[str, str]]:
    """Every entry of a prompt library as ``{"prompt": ..., "image"?: ..., "last_image"?: ...}``."""
    from tuner.jsonfile import read_json

    data = read_json(path)
    if not isinstance(data, dict) or not data:
        raise ValueError(f'{path}: expected a non-empty JSON object such as {{"nickname": "the prompt"}}')
    out: dict[str, dict[str, str]] = {}
    for key, value in data.items():
        entry = {"prompt": value} if isinstance(value, str) else value
        if (
            not str(key).strip()
            or not isinstance(entry, dict)
            or not isinstance(entry.get("prompt"), str)
            or not entry["prompt"].strip()
        ):
            raise ValueError(
                f"{path}: every entry needs a nickname and a non-empty prompt string, or an object"
                f' {{"prompt": ..., "image": ...}} (see \'{key}\')'
            )
        extra = set(entry) - {"prompt", *_IMAGE_KEYS}
        if extra:
            raise ValueError(f"{path}: entry '{key}' has unknown key '{sorted(extra)[0]}' (known: prompt, image, last_image)")
        if "last_image" in entry and "image" not in entry:
            raise ValueError(f"{path}: entry '{key}' has a last_image but no image")
        for name in _IMAGE_KEYS:
            if name in entry:
                image = path.parent / str(entry[name])
                if not image.is_file():
                    raise ValueError(f"{path}: entry '{key}' {name}: no file at {image}")
                entry[name] = str(image.resolve())
        out[str(key)] = {k: str(v) for k, v in entry.items()}
    return out


def read_prompt_library(path: Path) -> dict[str, str]:
    """A ``user_prompt_library`` file: a JSON object of nickname -> prompt (or -> ``{"prompt", "image"}``)."""
    return {k: v["prompt"] for k, v in _library_entries(path).items()}


def read_prompt_images(path: Path) -> dict[str, list[Path]]:
    """The images of a prompt library's entries that give one: nickname -> ``[image]`` or ``[image, last_image]``.

    Relative image paths are read from the library file's folder.
    """
    return {
        k: [Path(v[name]) for name in _IMAGE_KEYS if name in v] for k, v in _library_entries(path).items() if "image" in v
    }


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
    validation_image: Path | None = Field(
        None,
        description="Image-to-video models: the first frame validation_prompt starts from (an image file), and every"
        " other prompt that gets none from its library entry ({\"prompt\": ..., \"image\": ...}) or from"
        " validation_using_datasets.",
    )
    validation_using_datasets: bool = Field(
        False,
        description="Image-to-video models: take validation first frames from the files of the dataset eval_dataset_id"
        " names (images, or the first frame of clips; sorted by path): the round's prompts take them in turn.",
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
    validation_fps: int | None = Field(
        None,
        ge=1,
        le=240,
        description="Frame rate of the written videos. Unset: the model's own frame rate (Wan 2.1/2.2: 16,"
        " Wan 2.2 TI2V-5B: 24), or 16 for a family that states none.",
    )
    validation_preview: bool = Field(
        False,
        description="Also render cheap previews of each clip at intermediate sampler steps (the denoised estimate,"
        " decoded at low cost): written to validation/step-N/previews and shown on the contact sheet and in the"
        " trackers. Families that cannot render previews ignore it with a notice.",
    )
    validation_preview_steps: int = Field(
        1,
        ge=1,
        description="With validation_preview: preview every N sampler steps (N, 2N, ... up to"
        " validation_num_inference_steps; 5 of 20 steps previews steps 5, 10, 15 and 20). Larger N, less overhead.",
    )
    validation_guidance_skip_layers: list[int] | None = Field(
        None,
        description="Skip-layer guidance: blocks skipped in an extra conditional pass whose difference from the"
        " full pass is added to the guided prediction (e.g. [9] for Wan 1.3B). Unset or []: off (from the command"
        " line: --set validation_guidance_skip_layers=).",
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

    @field_validator("validation_image")
    @classmethod
    def _image(cls, value: Path | None) -> Path | None:
        if value is not None and value.is_absolute() and not value.is_file():
            raise ValueError(f"no image file at {value}")
        return value

    @field_validator("validation_guidance_skip_layers")
    @classmethod
    def _layers(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            if not value:
                return None  # no block to skip: skip-layer guidance off, as unset (--set ...=) is
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

    @model_validator(mode="after")
    def _preview_fits(self) -> ValidationSection:
        if self.validation_preview and self.validation_preview_steps > self.validation_num_inference_steps:
            raise ValueError(
                f"validation_preview_steps = {self.validation_preview_steps} is above validation_num_inference_steps ="
                f" {self.validation_num_inference_steps}, so no step would be previewed: use at most"
                f" {self.validation_num_inference_steps}"
            )
        return self

    def preview_steps(self) -> tuple[int, ...]:
        """The sampler steps (from 1) previewed: every ``validation_preview_steps``-th; none when previews are off."""
        if not self.validation_preview:
            return ()
        every = self.validation_preview_steps
        return tuple(range(every, self.validation_num_inference_steps + 1, every))

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
        if self.eval_split and not self.eval_steps_interval:
            raise ValueError("eval_split holds samples out of training for nothing: set eval_steps_interval too")
        # eval_dataset_id without the evaluation loss may still give validation its first frames: the
        # two sections are checked together by `check_held_out_dataset`.
        return self


def check_held_out_dataset(validation: ValidationSection, evaluation: EvaluationSection) -> None:
    """``eval_dataset_id`` must serve the evaluation loss or validation's first frames; the latter needs it."""
    from tuner.errors import ConfigError

    if evaluation.eval_dataset_id and not evaluation.eval_steps_interval and not validation.validation_using_datasets:
        raise ConfigError(
            "eval_dataset_id holds samples out of training for nothing: set eval_steps_interval too (or"
            " validation_using_datasets, to take validation first frames from it)"
        )
    if validation.validation_using_datasets and not evaluation.eval_dataset_id:
        raise ConfigError(
            "validation_using_datasets takes validation first frames from a dataset: name it with eval_dataset_id"
        )

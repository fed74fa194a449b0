"""The core's own config sections: ``train``, ``data`` and ``validation``.

They are registered through the same hook as any plugin's section. Option names
follow the Wan quickstart guide, so a user can also write them at the top level
of the config, as the guide does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tuner.hookspecs import hookimpl

__all__ = ["TrainSection", "DataSection", "ValidationSection", "parse_size"]

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


class TrainSection(BaseModel):
    """How the adapter is trained and where the results go."""

    model_config = _STRICT

    output_dir: Path = Field(Path("output"), description="Folder for checkpoints, the adapter and validation media.")
    seed: int = Field(42, description="Seed for the data order, noise and timesteps. Same seed, same run.")
    learning_rate: float = Field(1e-4, gt=0, description="AdamW learning rate (constant).")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2.")
    adam_weight_decay: float = Field(0.01, ge=0, description="AdamW decoupled weight decay.")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    train_batch_size: int = Field(1, ge=1, description="Samples per micro-batch.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches whose gradients add up to one optimizer step."
    )
    max_train_steps: int = Field(100, ge=1, description="Optimizer steps to train for.")
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the gradient's global norm to this; 0 turns clipping off.")
    checkpoint_step_interval: int = Field(
        0, ge=0, description="Save a resumable checkpoint every N optimizer steps; 0 saves none before the end."
    )
    checkpoints_total_limit: int | None = Field(
        None, ge=1, description="Keep at most this many checkpoints; the oldest are deleted. Unset keeps all."
    )
    resume_from_checkpoint: str | None = Field(
        None,
        description="'latest' resumes from the newest complete checkpoint in output_dir (or starts fresh if there"
        " is none); a path resumes from that checkpoint folder.",
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="Autocast precision for the forward pass; the frozen base is stored in it too."
    )
    flow_schedule_shift: float = Field(
        1.0,
        gt=0,
        description="Shift of the sampled noise levels: above 1 trains more on noisy steps (composition), below 1"
        " on fine detail. 1 leaves the logit-normal sampling as it is.",
    )
    lora_rank: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha; unset means equal to lora_rank (scale 1).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch.")
    lora_target_modules: list[str] | None = Field(
        None, description="Module-name suffixes to adapt; unset uses the model family's default."
    )


class DataSection(BaseModel):
    """One local folder of captioned clips, at a fixed size and length."""

    model_config = _STRICT

    instance_data_dir: Path | None = Field(
        None, description="Folder of clips (.mp4 .mov .mkv .webm .avi) and images, searched recursively."
    )
    caption_strategy: Literal["textfile", "filename", "instanceprompt"] = Field(
        "textfile",
        description="textfile: a same-name .txt beside each clip; filename: the file name, '_' read as spaces;"
        " instanceprompt: instance_prompt for every clip.",
    )
    instance_prompt: str | None = Field(None, description="The caption used by caption_strategy='instanceprompt'.")
    num_frames: int = Field(17, ge=1, description="Frames taken from the start of each clip.")
    resolution: int = Field(
        480, ge=8, description="Clips are resized and centre-cropped to a resolution x resolution square."
    )
    cache_dir: Path = Field(Path("cache"), description="Where latent and text-embedding caches are kept.")
    vae_batch_size: int = Field(1, ge=1, description="Clips encoded together while the latent cache is built.")
    text_batch_size: int = Field(8, ge=1, description="Captions encoded together while the text cache is built.")

    @model_validator(mode="after")
    def _instance_prompt_needed(self) -> DataSection:
        if self.caption_strategy == "instanceprompt" and not self.instance_prompt:
            raise ValueError("caption_strategy 'instanceprompt' needs instance_prompt")
        return self


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


@hookimpl
def register_config_sections(register) -> None:  # type: ignore[no-untyped-def]
    register("train", TrainSection)
    register("data", DataSection)
    register("validation", ValidationSection)

"""The ``[train]`` config section: how the adapter is trained."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["TrainSection"]

_STRICT = ConfigDict(extra="forbid", validate_assignment=True)


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

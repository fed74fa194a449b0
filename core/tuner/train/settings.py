"""The ``[train]`` config section: how the adapter is trained."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["TrainSection", "OptimizerName", "LRSchedule"]

OptimizerName = Literal[
    "adamw",
    "adamw_bf16",
    "optimi-adamw",
    "optimi-adam",
    "optimi-lion",
    "optimi-stableadamw",
    "optimi-radam",
    "optimi-ranger",
    "optimi-adan",
    "optimi-sgd",
    "prodigy",
    "bnb-adamw8bit",
    "bnb-adamw8bit-paged",
    "bnb-lion8bit",
    "bnb-lion8bit-paged",
]
LRSchedule = Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]

# allow_inf_nan=False: no option here means anything with inf or nan (a learning rate, a shift, a size).
_STRICT = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class TrainSection(BaseModel):
    """How the adapter is trained and where the results go."""

    model_config = _STRICT

    output_dir: Path = Field(Path("output"), description="Folder for checkpoints, the adapter and validation media.")
    seed: int = Field(42, description="Seed for the data order, noise and timesteps. Same seed, same run.")
    optimizer: OptimizerName = Field(
        "adamw",
        description="adamw (torch); adamw_bf16 (adapter kept in bf16, Kahan-summed updates); optimi-adamw,"
        " optimi-adam, optimi-lion, optimi-stableadamw, optimi-radam, optimi-ranger, optimi-adan, optimi-sgd"
        " (torch-optimi); prodigy (learning-rate free: use learning_rate = 1.0); bnb-adamw8bit,"
        " bnb-adamw8bit-paged, bnb-lion8bit, bnb-lion8bit-paged (bitsandbytes, CUDA only).",
    )
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate (after warmup).")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="First moment decay (beta1) of Adam-style and Lion optimizers.")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="Second moment decay (beta2) of Adam-style and Lion optimizers.")
    adam_weight_decay: float = Field(0.01, ge=0, description="Decoupled weight decay.")
    adam_epsilon: float = Field(1e-8, gt=0, description="Adam epsilon.")
    lr_scheduler: LRSchedule = Field(
        "constant",
        description="constant, constant_with_warmup, linear (to 0), cosine (to 0), cosine_with_restarts, polynomial."
        " Every schedule except constant warms up linearly over lr_warmup_steps first.",
    )
    lr_warmup_steps: int = Field(0, ge=0, description="Steps of linear warmup from 0 to learning_rate.")
    lr_num_cycles: int = Field(1, ge=1, description="Hard restarts of cosine_with_restarts.")
    lr_power: float = Field(1.0, gt=0, description="Power of the polynomial decay.")
    train_batch_size: int = Field(1, ge=1, description="Samples per micro-batch.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches whose gradients add up to one optimizer step."
    )
    max_train_steps: int = Field(
        100, ge=0, le=10**9, description="Optimizer steps to train for; 0 means: as many as num_train_epochs make."
    )
    num_train_epochs: int = Field(
        0, ge=0, description="Passes over the data; 0 means: no epoch limit (max_train_steps decides)."
    )
    ignore_final_epochs: bool = Field(
        False,
        description="When both limits are set, the run normally stops at whichever comes first; true ignores the"
        " epoch limit so max_train_steps alone decides.",
    )
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping threshold; 0 turns clipping off.")
    grad_clip_method: Literal["norm", "value"] = Field(
        "norm", description="norm: scale the gradient so its global L2 norm is at most max_grad_norm;"
        " value: clamp every gradient element to [-max_grad_norm, max_grad_norm]."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: much less memory, about 30% slower."
    )
    base_model_default_dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Storage dtype of the frozen base weights; auto follows mixed_precision."
    )
    on_nan_loss: Literal["stop", "skip"] = Field(
        "stop",
        description="stop: end the run at the step whose loss is NaN/inf, keeping the last checkpoint; skip: drop"
        " that step's update and go on (stops anyway after 10 in a row).",
    )
    use_ema: bool = Field(False, description="Keep an exponential moving average of the adapter weights.")
    ema_decay: float = Field(0.999, gt=0, lt=1, description="EMA decay per update.")
    ema_update_interval: int = Field(1, ge=1, description="Update the EMA every N optimizer steps.")
    ema_validation: Literal["none", "ema_only", "comparison"] = Field(
        "comparison",
        description="With use_ema: none validates the trained weights, ema_only the EMA weights, comparison both"
        " side by side.",
    )
    checkpoint_step_interval: int = Field(
        0, ge=0, description="Save a resumable checkpoint every N optimizer steps; 0 saves none before the end."
    )
    checkpoints_total_limit: int | None = Field(
        None, ge=1, description="Keep at most this many checkpoints; the oldest are deleted. Unset keeps all."
    )
    resume_from_checkpoint: str | None = Field(
        None,
        description="'latest' resumes from the newest intact checkpoint in output_dir, skipping damaged ones with a"
        " notice (or starts fresh if there is none); a path resumes from that checkpoint folder.",
    )
    resume_weights_only: bool = Field(
        False,
        description="With resume_from_checkpoint naming a checkpoint folder: take only its adapter (and feature)"
        " weights and start afresh at step 0 with a new optimizer and schedule, for a run whose alpha or optimizer"
        " differs from the checkpoint's. A checkpoint of another model (family, flavour, experts) is refused all the"
        " same. Use a new output_dir.",
    )
    overwrite_output_dir: bool = Field(
        False,
        description="Start afresh in an output_dir that holds another run's checkpoints, deleting them and its"
        " train_log.jsonl first. Without it such a run stops before touching them: resume, or pick another folder.",
    )
    experts_on_accelerator: Literal["one", "all"] = Field(
        "one",
        description="Models with several denoisers (Wan 2.2 A14B experts): 'one' keeps only the expert in use on"
        " the accelerator and the others in CPU memory (their frozen weights move at each switch; adapters stay);"
        " 'all' keeps every expert there (no moves, the memory of all of them).",
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no",
        description="Autocast precision of the forward pass; the frozen base is stored in it too (unless"
        " base_model_default_dtype says otherwise). The adapter, its optimizer state and EMA stay float32; fp16"
        " scales the loss (steps whose gradients overflow are skipped and logged).",
    )
    flow_schedule_shift: float = Field(
        1.0,
        gt=0,
        description="Shift of the sampled noise levels: above 1 trains more on noisy steps (composition), below 1"
        " on fine detail. 1 leaves the logit-normal sampling as it is.",
    )
    flow_schedule_auto_shift: bool = Field(
        False,
        description="Pick the shift from each batch's frame size (about 1.6 at 256x256 up to 3.2 at 1024x1024)"
        " instead of flow_schedule_shift.",
    )
    flow_timestep_sampling: Literal["logit_normal", "uniform"] = Field(
        "logit_normal", description="Distribution of noise levels before the shift."
    )
    flow_logit_mean: float = Field(0.0, description="Mean of the logit-normal noise-level distribution.")
    flow_logit_std: float = Field(1.0, gt=0, description="Standard deviation of the logit-normal distribution.")
    model_type: Literal["lora"] = Field(
        "lora",
        description="What trains: 'lora', an adapter on the frozen model (lora_type picks LoRA or LyCORIS). The guide's"
        " configs set it; full fine-tuning is not offered.",
    )
    lora_type: Literal["standard", "lycoris"] = Field(
        "standard", description="standard: peft LoRA (lora_rank, lora_alpha); lycoris: LyCORIS from lycoris_config."
    )
    lycoris_config: Path | None = Field(
        None,
        description="JSON file for lora_type = lycoris: algo (lokr, loha, locon, full, ...), multiplier,"
        " linear_dim, linear_alpha, factor, and an optional apply_preset block.",
    )
    lora_format: Literal["auto", "comfyui", "diffusers"] = Field(
        "auto",
        description="Key layout of every exported adapter file (final, EMA, inside checkpoints, each expert's): auto"
        " writes the layout the model family names as loading in both ComfyUI and its diffusers pipeline (the table"
        " per family is in docs/training.md); comfyui: the original model's names (diffusion_model.blocks.N..., with"
        " .alpha) that ComfyUI maps; diffusers: the diffusers pipeline's names (transformer.blocks.N...).",
    )
    save_dtype: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="dtype of the exported adapter files (the final one, the EMA one and those inside checkpoints):"
        " fp32 keeps the trained weights exactly; bf16 and fp16 halve the file (.alpha scalars stay float32, exact)."
        " Training itself always keeps the"
        " adapter in float32 (resumable state included).",
    )
    lora_rank: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha; unset means equal to lora_rank (scale 1).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch.")
    lora_target_modules: list[str] | None = Field(
        None, description="Module-name suffixes to adapt; unset uses the model family's default."
    )
    output_name: str | None = Field(
        None,
        description="Base name (no folder, no extension) of the exported adapter files in output_dir, as kohya and"
        " SimpleTuner spell it: 'my-style' writes my-style.safetensors (my-style_ema.safetensors with use_ema,"
        " my-style_high_noise.safetensors and my-style_low_noise.safetensors when both experts train). Unset keeps"
        " pytorch_lora_weights.safetensors, the name diffusers' load_lora_weights(folder) looks for. Files inside"
        " checkpoints keep the default name.",
    )
    trigger_words: list[str] = Field(
        default_factory=list,
        description="Words that call up what the adapter learned (a token in the captions); written into each adapter"
        " file's metadata (modelspec.trigger_phrase) and the model card.",
    )
    init_lora: Path | None = Field(
        None,
        description="Start from an existing adapter file instead of a fresh one, in any layout tuner reads (diffusers,"
        " ComfyUI/original names, kohya lora_unet_*, musubi, SimpleTuner, LyCORIS): its rank and modules must match"
        " lora_rank and the targets; a run that resumes from a checkpoint ignores it. With both Wan 2.2 experts"
        " trained, name the high-noise file; the low-noise one is found beside it by its metadata or name.",
    )

    @field_validator("output_name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is None:
            return value
        stem = value[: -len(".safetensors")] if value.endswith(".safetensors") else value
        if not stem or stem in (".", "..") or "/" in stem or "\\" in stem or stem.startswith("."):
            raise ValueError(f"'{value}' is not a file name: give a plain name such as 'my-style' (no folder, no leading dot)")
        return stem

    @model_validator(mode="after")
    def _length_and_adapter(self) -> TrainSection:
        if self.max_train_steps == 0 and self.num_train_epochs == 0:
            raise ValueError("set max_train_steps or num_train_epochs (both are 0, so the run would not train)")
        if self.overwrite_output_dir and self.resume_from_checkpoint:
            raise ValueError(
                "overwrite_output_dir deletes the checkpoints resume_from_checkpoint would resume from: set one of them"
            )
        if self.resume_weights_only and self.resume_from_checkpoint in (None, "latest"):
            raise ValueError(
                "resume_weights_only starts a new run from a checkpoint's weights: set resume_from_checkpoint to that"
                " checkpoint's folder (not 'latest')"
            )
        if self.lora_type == "lycoris" and self.lycoris_config is None:
            raise ValueError("lora_type 'lycoris' needs lycoris_config (a JSON file, see docs/training.md)")
        return self

"""The ``ltx`` model family: the hooks tuner calls, each a few lines over `tuner_ltx.model`.

This module is the ``tuner.plugins`` entry point, so it imports nothing heavy:
``tuner plugins`` and ``tuner --help`` import it. torch and diffusers load
inside the hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field

from tuner import hookimpl
from tuner.loading import source_options

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig
    from tuner.types.adapter import AdapterWeights
    from tuner.types.bundle import ModelBundle
    from tuner.types.training import LossOutput
    from tuner.types.validation import ValidationRequest, ValidationResult


# Where the weights come from: the source options every family shares (tuner.loading), with the prefix.
# The base model's option keeps the name it had before that table.
LtxSources = source_options(
    "ltx",
    "ltx_",
    holds="transformer/, vae/, text_encoder/ (T5), tokenizer/ and scheduler/",
    roles=("model", "transformer", "transformer_subfolder"),
    default="Lightricks/LTX-Video",
    names={"model": "ltx_model_path"},
)


class LtxSection(LtxSources):  # type: ignore[misc,valid-type]
    """The ``[ltx]`` config table. Option names are unique across all plugins, hence the prefix."""

    model_config = ConfigDict(extra="forbid")
    ltx_max_sequence_length: int = Field(128, ge=1, description="T5 tokens per prompt (LTXPipeline's default: 128).")
    ltx_frame_rate: float = Field(
        25.0, gt=0, description="Frame rate the model is told (it scales time in the positional encoding), in training and validation."
    )


@hookimpl
def register_config_sections(register: Any) -> None:
    register("ltx", LtxSection)


@hookimpl
def register_model_families(register: Any) -> None:
    register("ltx", "LTX-Video 0.9.x text-to-video (diffusers layout; LoRA loads in LTXPipeline)")


@hookimpl
def load_model(config: RunConfig, device: torch.device) -> ModelBundle:
    from tuner_ltx.model import load

    return load(config, device)


@hookimpl
def encode_batch(bundle: ModelBundle, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    from tuner_ltx.model import encode_clips

    return encode_clips(bundle, pixels)


@hookimpl
def encode_prompts(bundle: ModelBundle, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
    from tuner_ltx.model import encode_texts

    return encode_texts(bundle, prompts)


@hookimpl
def collate_prompts(bundle: ModelBundle, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    from tuner_ltx.model import collate_texts

    return collate_texts(bundle, items)


@hookimpl
def compute_loss(
    bundle: ModelBundle, batch: dict[str, torch.Tensor], generator: torch.Generator, config: RunConfig
) -> LossOutput:
    from tuner.train.timesteps import training_sigmas
    from tuner.types.training import LossOutput

    from tuner_ltx.model import velocity_errors

    x0 = batch["latents"]
    pixel_area = x0.shape[-1] * x0.shape[-2] * bundle.spatial_multiple**2
    sigmas = training_sigmas(config, x0.shape[0], generator, pixel_area, x0.device)
    logs = {"sigma_mean": float(sigmas.mean())}
    errors = velocity_errors(bundle, batch, sigmas, generator, logs)
    return LossOutput(loss=errors.mean(), logs=logs, sigmas=sigmas)


@hookimpl
def eval_loss(
    bundle: ModelBundle, batch: dict[str, torch.Tensor], sigmas: torch.Tensor, generator: torch.Generator, config: RunConfig
) -> torch.Tensor:
    from tuner_ltx.model import velocity_errors

    return velocity_errors(bundle, batch, sigmas, generator)


@hookimpl
def validate(bundle: ModelBundle, request: ValidationRequest) -> ValidationResult:
    from tuner_ltx.model import render

    return render(bundle, request)


@hookimpl
def export_adapter(bundle: ModelBundle, weights: AdapterWeights, path: Path, lora_format: str) -> Path | None:
    from tuner_ltx.model import save_adapter

    return save_adapter(weights, path, lora_format)


@hookimpl
def write_tiny_model(path: Path, seed: int, variant: str | None) -> dict[str, Any]:
    from tuner_ltx.tiny import write_tiny_ltx

    return write_tiny_ltx(path, seed, variant)

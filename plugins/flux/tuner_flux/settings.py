"""The ``[flux]`` config section.

Every option starts with ``flux_``: option names are unique across sections and
the Wan section already uses the plain names (``pretrained_model_name_or_path``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tuner.loading import source_options

__all__ = ["FLAVOURS", "FluxSection"]

# flavour -> (hub repository, what it is)
FLAVOURS: dict[str, tuple[str, str]] = {
    "dev": ("black-forest-labs/FLUX.1-dev", "guidance-distilled, guidance embedding, 50-step sampling"),
    "schnell": ("black-forest-labs/FLUX.1-schnell", "timestep-distilled, no guidance embedding, 1-4 steps"),
}


# Where the weights come from: the options every family shares (tuner.loading), with Flux's prefix.
FluxSources = source_options(
    "flux",
    "flux_",
    holds="transformer/, vae/, text_encoder/ (CLIP-L), text_encoder_2/ (T5-XXL), tokenizer/, tokenizer_2/ and"
    " scheduler/",
)


class FluxFlavour(BaseModel):
    """Which FLUX.1: the first option of the section, before where its weights come from."""

    flux_model_flavour: Literal["dev", "schnell"] = Field(
        "dev",
        description="Which FLUX.1 to train; sets the repository loaded when flux_pretrained_model_name_or_path is"
        " unset. " + "; ".join(f"{name}: {summary} ({repo})" for name, (repo, summary) in FLAVOURS.items()) + ".",
    )


class FluxSection(FluxSources, FluxFlavour):  # type: ignore[misc,valid-type]
    """Where the Flux weights come from, how prompts are encoded, and the guidance the transformer is given."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    flux_t5_max_length: int | None = Field(
        None,
        ge=1,
        le=512,
        description="T5 tokens per prompt (longer prompts are cut); unset: 512 for dev, 256 for schnell, as"
        " FluxPipeline uses them. Changing it re-encodes the prompt cache.",
    )
    flux_guidance_value: float = Field(
        1.0,
        ge=0.0,
        description="Guidance value given to the guidance embedding while training (dev and other"
        " guidance-distilled models; ignored by schnell). 1.0 trains the LoRA without distilled guidance, the"
        " common choice; validation uses validation_guidance instead.",
    )

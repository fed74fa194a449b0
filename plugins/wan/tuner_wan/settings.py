"""The ``[wan]`` config section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tuner.loading import source_options

from tuner_wan.flavours import FLAVOURS, unknown_flavour

__all__ = ["FLAVOURS", "FlavourName", "WanSection"]

FlavourName = Literal[tuple(FLAVOURS)]  # type: ignore[valid-type]


# Where the weights come from: the options every family shares (tuner.loading), without a prefix here.
WanSources = source_options(
    "wan",
    "",
    holds="transformer/, vae/, text_encoder/, tokenizer/ and scheduler/",
    roles=("model", "transformer", "transformer_subfolder", "vae", "t5", "revision"),
    t5="UMT5",
    aliases={"transformer": ("pretrained_transformer_name_or_path",)},  # the guide writes both spellings
)


class WanFlavour(BaseModel):
    """Which Wan model: the first option of the section, before where its weights come from."""

    model_flavour: FlavourName = Field(
        "t2v-480p-1.3b-2.1",
        description="Which Wan model to train; sets the repository loaded when pretrained_model_name_or_path is"
        " unset. "
        + "; ".join(f"{name}: {f.summary} ({f.repo})" for name, f in FLAVOURS.items())
        + ".",
    )

    @field_validator("model_flavour", mode="before")
    @classmethod
    def _known_flavour(cls, value: object) -> object:
        # Before the Literal check, whose message would list every flavour instead of naming what is missing.
        if isinstance(value, str) and value not in FLAVOURS:
            raise ValueError(unknown_flavour(value))
        return value


class WanSection(WanSources, WanFlavour):  # type: ignore[misc,valid-type]
    """Where the Wan weights come from and how prompts are encoded."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    max_sequence_length: int = Field(
        512, ge=1, le=4096, description="Text tokens per prompt; Wan was trained with 512. Longer prompts are cut."
    )
    wan_force_2_1_time_embedding: bool = Field(
        False,
        description="TI2V 5B: embed the timestep once per sample (Wan 2.1 style) instead of once per token in"
        " training; saves the per-token modulation's memory and avoids time-embedding shape mismatches, but the"
        " clean first frame then sees the sample's timestep instead of 0. No effect on other flavours (a notice).",
    )
    wan_validation_load_other_stage: bool = Field(
        False,
        description="Wan 2.2 A14B: validation loads the other, frozen expert and samples with both stages, as the"
        " final pipeline does; without it a single expert's validation shows only its own noise range.",
    )
    wan_train_both_experts: bool = Field(
        False,
        description="Wan 2.2 A14B: train a LoRA on each expert in one run; each sample goes to the expert that owns"
        " its timestep, and two adapter files are written (high: `transformer`, low: `transformer_2`).",
    )
    wan_boundary_ratio: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Wan 2.2 A14B: the switch between experts as a fraction of the 1000 training timesteps (the"
        " high-noise expert owns t >= boundary); unset reads boundary_ratio from the model's model_index.json.",
    )
    wan_validation_guidance_2: float | None = Field(
        None,
        ge=0.0,
        description="Wan 2.2 A14B, two-stage validation: guidance scale of the low-noise stage (diffusers'"
        " guidance_scale_2); unset uses validation_guidance.",
    )
    wan_ti2v_text_only_probability: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Wan 2.2 TI2V 5B: the chance a sample trains as plain text-to-video (every latent frame noised"
        " and in the loss) instead of image-to-video (its first frame given clean, at timestep 0, out of the loss)."
        " 0 trains image-to-video only.",
    )
    wan_validation_sampler: Literal["unipc", "euler"] = Field(
        "unipc",
        description="Validation sampler: unipc (UniPC multistep, Wan's own) or euler (flow-matching Euler, which"
        " wants more steps, 40 or so).",
    )

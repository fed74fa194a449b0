"""The ``[wan]`` config section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["FLAVOURS", "WanSection"]

# model_flavour -> the diffusers-layout repository it trains by default.
FLAVOURS: dict[str, str] = {
    "t2v-480p-1.3b-2.1": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    "t2v-480p-14b-2.1": "Wan-AI/Wan2.1-T2V-14B-Diffusers",
}


class WanSection(BaseModel):
    """Where the Wan weights come from and how prompts are encoded."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model_flavour: Literal["t2v-480p-1.3b-2.1", "t2v-480p-14b-2.1"] = Field(
        "t2v-480p-1.3b-2.1", description="Which Wan model to train when no path is given."
    )
    pretrained_model_name_or_path: str | None = Field(
        None,
        description="Diffusers-layout folder or hub id holding transformer/, vae/, text_encoder/, tokenizer/ and"
        " scheduler/; unset uses the flavour's repository.",
    )
    pretrained_transformer_model_name_or_path: str | None = Field(
        None, description="Take the transformer from here instead: a folder, hub id or one .safetensors file."
    )
    pretrained_transformer_subfolder: str = Field(
        "transformer", description="Subfolder of the transformer source; 'none' when the weights sit at its root."
    )
    pretrained_vae_model_name_or_path: str | None = Field(
        None, description="Take the VAE (its vae/ subfolder) from here instead."
    )
    pretrained_t5_model_name_or_path: str | None = Field(
        None, description="Take the UMT5 text encoder and tokenizer (text_encoder/, tokenizer/) from here instead."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of the base repository.")
    max_sequence_length: int = Field(
        512, ge=1, le=4096, description="Text tokens per prompt; Wan was trained with 512. Longer prompts are cut."
    )
    wan_force_2_1_time_embedding: bool = Field(
        False, description="Wan 2.2 only (time-embedding shape mismatch fix); Wan 2.2 is not supported yet, so only false."
    )
    wan_validation_load_other_stage: bool = Field(
        False, description="Wan 2.2 only (load the other noise stage for validation); not supported yet, so only false."
    )

    @field_validator("wan_force_2_1_time_embedding", "wan_validation_load_other_stage")
    @classmethod
    def _wan_2_2_only(cls, value: bool) -> bool:
        if value:
            raise ValueError("applies to Wan 2.2 checkpoints, which tuner does not train yet (Wan 2.1 T2V only)")
        return value

    wan_validation_sampler: Literal["unipc", "euler"] = Field(
        "unipc",
        description="Validation sampler: unipc (UniPC multistep, Wan's own) or euler (flow-matching Euler, which"
        " wants more steps, 40 or so).",
    )

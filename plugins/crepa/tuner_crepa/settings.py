"""The ``[crepa]`` config section: the guide's CREPA options and the weight schedule."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CrepaSection"]


class CrepaSection(BaseModel):
    """CREPA (training only): align a block's hidden states, frame by frame, to DINOv2 features of the same
    and neighbouring frames, as an extra loss term."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    crepa_enabled: bool = Field(False, description="Turn CREPA on (the guide: Training -> Loss functions -> CREPA).")
    crepa_block_index: int = Field(
        8,
        description="Block whose output hidden states are aligned (the guide's Block Index), counted from 0;"
        " negative counts from the last block (Flux: its double-stream blocks). Must lie outside every"
        " token-routing route.",
    )
    crepa_lambda: float = Field(
        0.5, ge=0.0, description="Weight of the alignment term in the loss (the guide's Weight). 0 only logs it."
    )
    crepa_adjacent_distance: int = Field(
        1,
        ge=0,
        description="Each frame is aligned to the teacher's features of the frames up to this many frames away"
        " (the guide's Adjacent Distance; 0 = the same frame only, per-frame REPA).",
    )
    crepa_adjacent_tau: float = Field(
        1.0,
        gt=0.0,
        description="Temporal decay: a neighbour d frames away weighs exp(-d / tau) (the guide's Temporal Decay).",
    )
    crepa_encoder: str = Field(
        "dinov2_vitg14",
        description="The frozen teacher: dinov2_vitg14 (facebook/dinov2-giant), dinov2_vitl14, dinov2_vitb14 or"
        " dinov2_vits14 (facebook/dinov2-small, least memory), a Hugging Face hub id, or a local folder holding a"
        " transformers Dinov2Model (config.json + weights). Loaded through the Hugging Face cache, never torch.hub.",
    )
    crepa_encoder_image_size: int = Field(
        518,
        ge=14,
        description="The teacher sees about this many pixels squared per frame (a multiple of its patch size, 14),"
        " keeping the frame's aspect: 518 for dinov2_vitg14, 224 for dinov2_vits14.",
    )
    crepa_drop_vae_encoder: bool = Field(
        False,
        description="Free the VAE's encoder once the caches are checked (the decoder stays, for validation). Only"
        " when every clip's latents are already cached: refused otherwise. Not for families whose validation"
        " encodes images (image-to-video).",
    )
    crepa_scheduler: Literal["constant", "linear", "cosine", "polynomial"] = Field(
        "constant",
        description="How the weight moves from crepa_lambda to crepa_lambda_end after the warm-up: constant (stays"
        " at crepa_lambda), linear, cosine or polynomial (crepa_power).",
    )
    crepa_warmup_steps: int = Field(
        0, ge=0, description="Steps over which the weight ramps up from 0 to crepa_lambda (0: none)."
    )
    crepa_decay_steps: int = Field(
        0,
        ge=0,
        description="Steps after the warm-up over which the weight decays to crepa_lambda_end (0: until the last step).",
    )
    crepa_lambda_end: float = Field(0.0, ge=0.0, description="The weight at the end of the decay.")
    crepa_power: float = Field(1.0, gt=0.0, description="Exponent of the polynomial schedule.")
    crepa_cutoff_step: int = Field(
        0, ge=0, description="From this optimizer step on the term is off (weight 0; 0: never cut off)."
    )
    crepa_export_projector: bool = Field(
        False,
        description="Also write the trained projector as crepa_projector.safetensors in output_dir at the end"
        " (it is always in the checkpoints; inference never needs it).",
    )

"""The ``[attention]`` config section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tuner_attention.backends import MechanismName

__all__ = ["AttentionSection"]


class AttentionSection(BaseModel):
    """Which attention kernel the denoiser uses (through diffusers' attention dispatcher)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    attention_mechanism: MechanismName = Field(
        "diffusers",
        description="diffusers: PyTorch scaled-dot-product attention as diffusers picks it (any device);"
        " sdpa-math, sdpa-flash: SDPA with that kernel forced (any device); sdpa-efficient, sdpa-cudnn, flex:"
        " PyTorch kernels for CUDA; xformers, flash-attn, flash-attn-varlen, flash-attn-3: CUDA and that package;"
        " flash-attn-hub, flash-attn-3-hub, sageattention-hub: CUDA and the kernels package (downloads the"
        " kernel); sageattention and its variants (-varlen, -int8-fp16-triton, -int8-fp16-cuda, -int8-fp8-cuda,"
        " -int8-fp8-cuda-sm90): CUDA and the sageattention package, validation only (no backward pass: training"
        " uses SDPA). Flash and Sage kernels need mixed_precision bf16 or fp16. A choice that cannot run here"
        " stops the run at start-up, naming what is missing.",
    )

"""The ``[quantize]`` config section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Precision", "QuantizeSection"]

Precision = Literal["no_change", "int8-quanto", "fp8-quanto", "fp8uz-quanto", "int4-quanto", "int2-quanto"]

_PRECISIONS = (
    "no_change keeps the loaded dtype; int8-quanto, fp8-quanto (e4m3fn), fp8uz-quanto (e4m3fnuz), int4-quanto,"
    " int2-quanto store the weights in that many bits with optimum-quanto (pip install 'tuner[quanto]')"
)


class QuantizeSection(BaseModel):
    """Frozen weights stored in fewer bits (optimum-quanto); the adapter trains in full precision on top."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    base_model_precision: Precision = Field(
        "no_change",
        description=f"Precision of the denoiser's frozen block weights: {_PRECISIONS}. A model family may refuse"
        " a precision it does not survive (Wan refuses int4 and int2).",
    )
    quantize_via: Literal["cpu", "accelerator"] = Field(
        "accelerator",
        description="Where the weights are quantized: accelerator (fast; the full-precision weights visit the"
        " accelerator first) or cpu (slower; they never do, which keeps the start-up peak low).",
    )
    text_encoder_1_precision: Precision = Field(
        "no_change",
        description=f"Precision of the first text encoder's weights: {_PRECISIONS}. Changes the cached text"
        " embeddings (they are re-encoded).",
    )

    text_encoder_2_precision: Precision = Field(
        "no_change",
        description=f"Precision of the second text encoder's weights, for families that have one: {_PRECISIONS}."
        " A family with a single text encoder (Wan) refuses anything but no_change.",
    )

    @property
    def quantizes(self) -> bool:
        """Whether any weights are quantized."""
        precisions = {self.base_model_precision, self.text_encoder_1_precision, self.text_encoder_2_precision}
        return precisions != {"no_change"}

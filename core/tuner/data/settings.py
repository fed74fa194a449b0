"""The ``[data]`` config section: where the training data is, and how it is cached and batched.

Two ways to name the data: ``instance_data_dir`` (one folder, the shorthand) or
``data_backend_config`` (a JSON backend file listing datasets, as the Wan guide's
``multidatabackend.json`` does). The per-dataset keys of the backend file live in
`tuner.data.backends`; the options here are run-wide, and the ones a dataset can
also set (``resolution``, ``resolution_type``, ``minimum_image_size``, ``num_frames``,
``caption_strategy``) are the defaults of every dataset that leaves them out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuner.data.sizing import MAX_SIDE

__all__ = ["DataSection", "CaptionStrategy", "ResolutionType"]

# allow_inf_nan=False: no option here means anything with inf or nan (a learning rate, a shift, a size).
_STRICT = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

CaptionStrategy = Literal["textfile", "filename", "instanceprompt", "parquet"]
ResolutionType = Literal["pixel", "area", "pixel_area"]


class DataSection(BaseModel):
    """Where the training data is, how samples are sized, cached and batched."""

    model_config = _STRICT

    data_backend_config: Path | None = Field(
        None,
        description="JSON backend file listing the datasets (the guide's multidatabackend.json; see docs/data.md)."
        " Replaces instance_data_dir.",
    )
    instance_data_dir: Path | None = Field(
        None,
        description="Shorthand for one dataset: a folder of clips (.mp4 .mov .mkv .webm .avi .m4v) and images"
        " (.png .jpg .jpeg .webp .bmp), searched recursively.",
    )
    caption_strategy: CaptionStrategy = Field(
        "textfile",
        description="textfile: a same-name .txt beside each file; filename: the file name, '_' read as spaces;"
        " instanceprompt: instance_prompt for every file; parquet: a JSONL/CSV metadata file (backend file only).",
    )
    instance_prompt: str | None = Field(None, description="The caption used by caption_strategy='instanceprompt'.")
    num_frames: int = Field(
        17, ge=1, description="Frames taken from the start of each clip (a video dataset's default). Wan needs 4k+1."
    )
    resolution: float = Field(
        480,
        gt=0,
        le=MAX_SIDE,
        description="Training size: the short side in pixels (resolution_type pixel), the side of a square of the"
        " same area (pixel_area), or megapixels (area).",
    )
    resolution_type: ResolutionType = Field(
        "pixel_area", description="How resolution (and minimum_image_size) are measured: pixel, pixel_area or area."
    )
    minimum_image_size: float = Field(
        0, ge=0, description="Skip samples smaller than this, in resolution_type's unit; 0 keeps all."
    )
    cache_dir: Path = Field(
        Path("cache"),
        description="Root of the caches: latents under cache_dir/vae, text embeddings in cache_dir/text (unless the"
        " backend file says otherwise), the data report in cache_dir/data_report.json.",
    )
    aspect_bucket_rounding: int = Field(
        2, ge=0, le=6, description="Decimal places aspect ratios are rounded to when clips are grouped in buckets."
    )
    disable_bucket_pruning: bool = Field(
        False,
        description="Keep buckets with fewer samples than train_batch_size x gradient_accumulation_steps (their"
        " batches are completed with samples drawn again from the same bucket).",
    )
    caption_dropout_probability: float = Field(
        0.0, ge=0, le=1, description="Chance that a sample trains with the empty prompt instead of its caption."
    )
    compress_disk_cache: bool = Field(False, description="Write cache entries gzip-compressed.")
    delete_problematic_images: bool = Field(
        False,
        description="Move files that cannot be read (corrupt, truncated, empty) into <dataset>/.tuner-quarantine/"
        " instead of only listing them. Nothing is deleted.",
    )
    vae_batch_size: int = Field(1, ge=1, description="Clips encoded together while the latent cache is built.")
    text_batch_size: int = Field(8, ge=1, description="Captions encoded together while the text cache is built.")
    write_batch_size: int = Field(
        128,
        ge=1,
        description="Cache entries handed to the background writer at most at once; the encoder goes on while they"
        " are written.",
    )
    decode_workers: int = Field(
        0, ge=0, description="Threads decoding clips ahead of the encoder; 0: one per CPU core but one, at most 4."
    )

    @model_validator(mode="after")
    def _consistent(self) -> DataSection:
        if self.data_backend_config is not None and self.instance_data_dir is not None:
            raise ValueError(
                "set either data_backend_config (a backend file) or instance_data_dir (one folder), not both"
            )
        if self.caption_strategy == "instanceprompt" and not self.instance_prompt:
            raise ValueError("caption_strategy 'instanceprompt' needs instance_prompt")
        if self.caption_strategy == "parquet" and self.data_backend_config is None:
            raise ValueError(
                "caption_strategy 'parquet' reads a metadata file named in a backend file's 'parquet' block:"
                " set data_backend_config"
            )
        if self.resolution_type != "area" and self.resolution < 8:
            raise ValueError(
                f"resolution {self.resolution} is below 8 pixels: for megapixels set resolution_type = 'area'"
            )
        return self

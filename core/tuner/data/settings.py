"""The ``[data]`` config section: where the training clips are and how they are read."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DataSection"]

_STRICT = ConfigDict(extra="forbid", validate_assignment=True)


class DataSection(BaseModel):
    """One local folder of captioned clips, at a fixed size and length."""

    model_config = _STRICT

    instance_data_dir: Path | None = Field(
        None, description="Folder of clips (.mp4 .mov .mkv .webm .avi) and images, searched recursively."
    )
    caption_strategy: Literal["textfile", "filename", "instanceprompt"] = Field(
        "textfile",
        description="textfile: a same-name .txt beside each clip; filename: the file name, '_' read as spaces;"
        " instanceprompt: instance_prompt for every clip.",
    )
    instance_prompt: str | None = Field(None, description="The caption used by caption_strategy='instanceprompt'.")
    num_frames: int = Field(17, ge=1, description="Frames taken from the start of each clip.")
    resolution: int = Field(
        480, ge=8, description="Clips are resized and centre-cropped to a resolution x resolution square."
    )
    cache_dir: Path = Field(Path("cache"), description="Where latent and text-embedding caches are kept.")
    vae_batch_size: int = Field(1, ge=1, description="Clips encoded together while the latent cache is built.")
    text_batch_size: int = Field(8, ge=1, description="Captions encoded together while the text cache is built.")

    @model_validator(mode="after")
    def _instance_prompt_needed(self) -> DataSection:
        if self.caption_strategy == "instanceprompt" and not self.instance_prompt:
            raise ValueError("caption_strategy 'instanceprompt' needs instance_prompt")
        return self

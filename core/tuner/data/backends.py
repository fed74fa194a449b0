"""The backend file: a JSON list of datasets, read as the Wan guide writes it.

Each entry is checked by the model of its ``dataset_type`` (``extra="forbid"``),
and every error names the file, the dataset and the key. `tuner.data.layout`
turns the entries into the datasets a run trains on.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuner.data.settings import CaptionStrategy, ResolutionType
from tuner.data.sizing import MAX_SIDE
from tuner.errors import DataError, did_you_mean

__all__ = [
    "VideoOptions",
    "ParquetOptions",
    "MediaDatasetEntry",
    "TextEmbedsEntry",
    "ConditioningImageEmbedsEntry",
    "DEFAULT_ASPECT_BUCKETS",
    "parse_backend_file",
]

_FORBID = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)
# Used by crop_aspect closest/random when the dataset names no crop_aspect_buckets.
DEFAULT_ASPECT_BUCKETS = (0.5625, 0.6667, 0.75, 1.0, 1.3333, 1.5, 1.7778)


class VideoOptions(BaseModel):
    """The ``video`` block of a video dataset."""

    model_config = _FORBID

    num_frames: int | None = Field(
        None, ge=1, description="Frames trained per clip (per window: see frame_extraction), at the training frame rate."
    )
    min_frames: int | None = Field(None, ge=1, description="Shorter clips are skipped; defaults to num_frames.")
    max_frames: int | None = Field(
        None,
        ge=1,
        description="Longer clips are skipped; with frame_extraction 'full', the most frames the one window takes"
        " instead (counted at the training frame rate).",
    )
    bucket_strategy: Literal["aspect_ratio", "resolution_frames"] = Field(
        "aspect_ratio", description="aspect_ratio: group by rounded aspect; resolution_frames: by WxH@frames."
    )
    frame_interval: int | None = Field(
        None, ge=1, description="With resolution_frames: frame counts are rounded down to a multiple of this."
    )
    frame_extraction: Literal["head", "chunk", "slide", "uniform", "full", "random"] = Field(
        "head",
        description="Which parts of a clip train: head (its start), chunk (back-to-back windows), slide (a window every"
        " frame_stride frames), uniform (frame_sample windows spread over it), full (all of it, up to max_frames),"
        " random (a fresh window each epoch, drawn from the run's seed).",
    )
    target_frames: list[int] | None = Field(
        None,
        min_length=1,
        description="Window lengths in frames (each must fit the family's frame rule, e.g. Wan's 4k+1); each"
        " length forms its own frame buckets. Replaces num_frames.",
    )
    frame_stride: int = Field(1, ge=1, description="frame_extraction 'slide': frames between window starts.")
    frame_sample: int = Field(1, ge=1, description="frame_extraction 'uniform': windows per clip.")
    source_fps: float | None = Field(
        None,
        gt=0,
        description="Time the frames at this rate instead of by the file's timestamps (for clips whose timestamps are"
        " wrong, or a slow-motion clip to train at the rate it was filmed at).",
    )
    target_fps: float | None = Field(
        None, gt=0, description="Resample clips to this rate instead of the rate the model family states."
    )
    resample_fps: bool = Field(
        True,
        description="Resample clips to the model's frame rate (nearest frame by timestamp). false: every frame is"
        " used at the file's own rate.",
    )
    # The guide's (SimpleTuner's) per-dataset image-to-video switch. Here the model flavour decides: an
    # image-to-video flavour conditions every clip on its first frame, a text-to-video one none.
    is_i2v: bool | None = Field(
        None, description="The guide's key, accepted as true only: the model flavour decides image-to-video training."
    )

    @model_validator(mode="after")
    def _ordered(self) -> VideoOptions:
        if self.is_i2v is False:
            raise ValueError(
                "is_i2v = false is not offered: the model flavour decides (an image-to-video flavour conditions"
                " every clip on its first frame); remove is_i2v, or train a text-to-video flavour"
            )
        if self.min_frames and self.max_frames and self.min_frames > self.max_frames:
            raise ValueError(f"min_frames {self.min_frames} is above max_frames {self.max_frames}")
        if self.num_frames and self.max_frames and self.num_frames > self.max_frames:
            raise ValueError(f"num_frames {self.num_frames} is above max_frames {self.max_frames}: no clip could fit")
        if self.target_frames and min(self.target_frames) < 1:
            raise ValueError(f"target_frames must be positive frame counts (got {self.target_frames})")
        if self.frame_stride != 1 and self.frame_extraction != "slide":
            raise ValueError("frame_stride applies to frame_extraction 'slide' only: set frame_extraction = 'slide'")
        if self.frame_sample != 1 and self.frame_extraction != "uniform":
            raise ValueError("frame_sample applies to frame_extraction 'uniform' only: set frame_extraction = 'uniform'")
        return self


class ParquetOptions(BaseModel):
    """The metadata file of ``caption_strategy: parquet`` (JSONL, JSON or CSV; .parquet with pyarrow)."""

    model_config = _FORBID

    path: str = Field(description="The metadata file; relative paths are read from the config file's folder.")
    filename_column: str = Field("file_name", description="Column naming the file (relative path, name or stem).")
    caption_column: str = Field("caption", description="Column holding the caption.")
    fallback_caption_column: str | None = Field(None, description="Used where caption_column is empty.")
    identifier_includes_extension: bool | None = Field(
        None, description="Whether filename_column keeps the extension; unset matches either way."
    )


class MediaDatasetEntry(BaseModel):
    """A dataset of training files (``dataset_type`` video or image)."""

    model_config = _FORBID

    id: str = Field(min_length=1)
    # Any registered data backend (`tuner.hookspecs.register_data_backends`): checked when the layout is read.
    type: str = Field("local", min_length=1)
    dataset_type: Literal["video", "image"] = "image"
    disabled: bool = Field(False, validation_alias=AliasChoices("disabled", "disable"))
    instance_data_dir: str
    caption_strategy: CaptionStrategy | None = None
    instance_prompt: str | None = None
    parquet: ParquetOptions | None = None
    metadata_backend: Literal["discovery"] = "discovery"
    crop: bool = False
    crop_style: Literal["center", "centre", "corner", "random"] = "center"
    crop_aspect: Literal["square", "preserve", "closest", "random"] = "square"
    crop_aspect_buckets: list[float] | None = None
    resolution: float | None = Field(None, gt=0, le=MAX_SIDE)
    resolution_type: ResolutionType | None = None
    minimum_image_size: float | None = Field(None, ge=0)
    maximum_image_size: float | None = Field(None, gt=0)
    target_downsample_size: float | None = Field(None, gt=0)
    repeats: int = Field(0, ge=0)
    probability: float = Field(1.0, gt=0)
    cache_dir_vae: str | None = None
    text_embeds: str | None = None
    conditioning_image_embeds: str | None = None
    cache_dir_conditioning_image_embeds: str | None = None
    video: VideoOptions | None = None

    @model_validator(mode="after")
    def _coherent(self) -> MediaDatasetEntry:
        if self.video is not None and self.dataset_type != "video":
            raise ValueError("the 'video' block applies to dataset_type 'video' only")
        if (self.maximum_image_size is None) != (self.target_downsample_size is None):
            raise ValueError("maximum_image_size and target_downsample_size work together: set both or neither")
        if (
            self.maximum_image_size
            and self.target_downsample_size
            and self.target_downsample_size > self.maximum_image_size
        ):
            raise ValueError("target_downsample_size must not be above maximum_image_size")
        if self.crop_aspect_buckets is not None and (
            not self.crop_aspect_buckets or min(self.crop_aspect_buckets) <= 0
        ):
            raise ValueError("crop_aspect_buckets must be a non-empty list of positive width/height ratios")
        if self.parquet is not None and self.caption_strategy != "parquet":
            raise ValueError("the 'parquet' block is read only with caption_strategy 'parquet'")
        if self.caption_strategy == "parquet" and self.parquet is None:
            raise ValueError("caption_strategy 'parquet' needs a 'parquet' block naming the metadata file (path)")
        return self


class TextEmbedsEntry(BaseModel):
    """Where caption embeddings are cached (``dataset_type: text_embeds``)."""

    model_config = _FORBID

    id: str = Field(min_length=1)
    type: Literal["local"] = "local"
    dataset_type: Literal["text_embeds"]
    default: bool = False
    disabled: bool = Field(False, validation_alias=AliasChoices("disabled", "disable"))
    cache_dir: str | None = None
    write_batch_size: int | None = Field(None, ge=1)


class ConditioningImageEmbedsEntry(BaseModel):
    """The guide's cache of conditioning image embeddings; accepted, while tuner keeps them in the latent entries."""

    model_config = _FORBID

    id: str = Field(min_length=1)
    type: Literal["local"] = "local"
    dataset_type: Literal["conditioning_image_embeds"]
    disabled: bool = Field(False, validation_alias=AliasChoices("disabled", "disable"))
    cache_dir: str | None = None


_MODELS: dict[str, type[BaseModel]] = {
    "video": MediaDatasetEntry,
    "image": MediaDatasetEntry,
    "text_embeds": TextEmbedsEntry,
    "conditioning_image_embeds": ConditioningImageEmbedsEntry,
}
_NOT_YET = {"image_embeds", "conditioning", "audio"}


def _entry_error(where: str, model: type[BaseModel], exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            names = model.model_fields
            if len(err["loc"]) > 1 and err["loc"][0] in ("video", "parquet"):
                names = (VideoOptions if err["loc"][0] == "video" else ParquetOptions).model_fields
            parts.append(f"unknown key '{loc}'{did_you_mean(str(err['loc'][-1]), names)}")
        elif err["type"] == "missing":
            parts.append(f"'{loc}' is required")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            hint = ""
            if loc == "crop_aspect" and err.get("input") in ("center", "centre", "corner"):
                hint = "; where the crop is taken is crop_style (center, corner, random)"
            parts.append(f"{loc}: {msg} (got {err.get('input')!r}){hint}" if loc else msg)
    more = len(exc.errors()) - len(parts)
    return f"{where}: " + "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_backend_file(path: Path, types: Collection[str]) -> list[tuple[str, BaseModel]]:
    """Every entry of the backend file at ``path``, validated, with how errors name it.

    :param types: the data backends a dataset's ``type`` may name (`RunConfig.data_backends`).
    """
    from tuner.jsonfile import read_json

    raw = read_json(path, what="data_backend_config", error=DataError)
    if not isinstance(raw, list):
        raise DataError(f"data_backend_config {path}: the top level must be a list of datasets ([{{...}}, ...])")
    entries: list[tuple[str, BaseModel]] = []
    seen: set[str] = set()
    for number, item in enumerate(raw, start=1):
        if not isinstance(item, dict):
            raise DataError(f"data_backend_config {path}: entry {number} is not an object")
        _check_text(item, f"data_backend_config {path}: entry {number}")
        name = item.get("id")
        where = (
            f"data_backend_config {path}: dataset '{name}' (entry {number})"
            if name
            else f"data_backend_config {path}: entry {number}"
        )
        if not isinstance(name, str) or not name:
            raise DataError(f"{where}: every dataset needs an 'id' (a non-empty string)")
        if name in seen:
            raise DataError(f"{where}: id '{name}' is used twice; ids must be unique")
        seen.add(name)
        kind = item.get("dataset_type", "image")
        if not isinstance(kind, str):
            raise DataError(f"{where}: dataset_type must be one of {', '.join(_MODELS)} (got {kind!r})")
        if kind in _NOT_YET:
            raise DataError(f"{where}: dataset_type '{kind}' is not supported by tuner yet")
        if kind not in _MODELS:
            raise DataError(f"{where}: dataset_type must be one of {', '.join(_MODELS)} (got {kind!r})")
        model = _MODELS[kind]
        try:
            entries.append((where, model.model_validate(item)))
        except ValidationError as exc:
            raise DataError(_entry_error(where, model, exc)) from None
        _check_paths(where, entries[-1][1])
        _check_type(where, entries[-1][1], types)
    return entries


def _check_text(item: dict, where: str) -> None:
    # A NUL or a lone surrogate in any value fails later, inside the file system or a log line.
    from tuner.paths import text_problem

    def walk(value: object, key: str) -> None:
        if isinstance(value, str) and (problem := text_problem(value)):
            raise DataError(f"{where}: {key}: the value {problem}: remove it")
        if isinstance(value, dict):
            for k, v in value.items():
                if problem := text_problem(str(k)):
                    raise DataError(f"{where}: the key {ascii(k)} {problem}: remove it")
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")

    walk(item, "")


def _check_type(where: str, entry: BaseModel, types: Collection[str]) -> None:
    kind = getattr(entry, "type", "local")
    if kind not in types:
        raise DataError(
            f"{where}: type '{kind}' names no data backend{did_you_mean(kind, types)}; data backends:"
            f" {', '.join(sorted(types)) or 'none'} (plugins add more: docs/plugins.md)"
        )


def _check_paths(where: str, entry: BaseModel) -> None:
    from tuner.paths import check_path_text

    values = {name: getattr(entry, name, None) for name in ("instance_data_dir", "cache_dir_vae", "cache_dir")}
    parquet = getattr(entry, "parquet", None)
    values["parquet.path"] = parquet.path if parquet is not None else None
    for name, value in values.items():
        if isinstance(value, str):
            check_path_text(f"{where}: {name}", value, error=DataError)

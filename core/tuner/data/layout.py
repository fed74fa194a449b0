"""The datasets a run trains on, with every default resolved.

`load_layout` reads the backend file (`tuner.data.backends`) or, without one,
turns the ``[data]`` shorthand (``instance_data_dir``) into a one-dataset layout.
Keys a dataset leaves out take the ``[data]`` section's values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tuner.data.backends import (
    DEFAULT_ASPECT_BUCKETS,
    ConditioningImageEmbedsEntry,
    MediaDatasetEntry,
    ParquetOptions,
    TextEmbedsEntry,
    VideoOptions,
    parse_backend_file,
)
from tuner.data.sizing import MAX_SIDE
from tuner.errors import DataError

if TYPE_CHECKING:
    from tuner.config import RunConfig
    from tuner.data.settings import DataSection
    from tuner.data.storage import DataBackend

__all__ = ["DatasetSpec", "DataLayout", "load_layout", "locate_input", "safe_name"]


@dataclass(frozen=True)
class DatasetSpec:
    """One enabled media dataset with every default resolved."""

    id: str
    kind: Literal["video", "image"]
    root: Path
    caption_strategy: str
    instance_prompt: str | None
    metadata: ParquetOptions | None
    metadata_path: Path | None
    crop: bool
    crop_style: str
    crop_aspect: str
    crop_aspect_buckets: tuple[float, ...]
    resolution: float
    resolution_type: str
    minimum_image_size: float
    maximum_image_size: float | None
    target_downsample_size: float | None
    repeats: int
    probability: float
    vae_cache: Path
    text_cache: Path
    num_frames: int | None
    min_frames: int
    max_frames: int | None
    bucket_strategy: str
    frame_interval: int | None
    frame_extraction: str = "head"
    target_frames: tuple[int, ...] = ()
    frame_stride: int = 1
    frame_sample: int = 1
    source_fps: float | None = None
    target_fps: float | None = None
    resample_fps: bool = True
    # How messages name this dataset's frame count: "data.num_frames" or "dataset 'x' video.num_frames".
    frames_key: str = "data.num_frames"
    where: str = ""
    root_hint: str = ""  # said when root is missing: where relative paths are read from (`PathRule.hint`)
    type: str = "local"  # the data backend that lists and reads the files (`tuner.data.storage`)
    # instance_data_dir as written, for a backend that reads it as a name (a hub id, a URL) rather than a path.
    source: str = ""


@dataclass
class DataLayout:
    """Everything the scan needs to know about where data and caches are."""

    datasets: list[DatasetSpec]
    default_text_cache: Path
    text_write_batch_size: int
    notes: list[str] = field(default_factory=list)
    backends: dict[str, DataBackend] = field(default_factory=dict)  # each dataset's type -> its backend


def locate_input(value: str | Path, config: RunConfig) -> Path:
    """An input path of the backend file or the data section, under the run's path rule (`tuner.config_paths`)."""
    return config.paths.resolve(value)


def _output_path(value: str | Path, config: RunConfig) -> Path:
    return config.paths.resolve(value)


def safe_name(name: str) -> str:
    """A dataset id made safe as a file or folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "dataset"


def _frames(entry: MediaDatasetEntry, data: DataSection) -> dict[str, Any]:
    if entry.dataset_type == "image":
        return dict(num_frames=1, min_frames=1, max_frames=None, bucket_strategy="aspect_ratio", frame_interval=None)
    video = entry.video or VideoOptions()
    if video.bucket_strategy == "resolution_frames":
        num = video.num_frames  # unset: each clip keeps its own length
    else:
        num = video.num_frames or data.num_frames
    return dict(
        num_frames=num,
        min_frames=video.min_frames or (min(video.target_frames) if video.target_frames else num) or 1,
        max_frames=video.max_frames,
        bucket_strategy=video.bucket_strategy,
        frame_interval=video.frame_interval,
        frame_extraction=video.frame_extraction,
        target_frames=tuple(video.target_frames or ()),
        frame_stride=video.frame_stride,
        frame_sample=video.frame_sample,
        source_fps=video.source_fps,
        target_fps=video.target_fps,
        resample_fps=video.resample_fps,
        frames_key=f"dataset '{entry.id}' video.num_frames" if video.num_frames else "data.num_frames",
    )


def _check_resolution(where: str, resolution: float, rtype: str) -> None:
    """A training size between 8 pixels and `MAX_SIDE` (or its area in megapixels)."""
    if rtype != "area" and resolution < 8:
        raise DataError(
            f"{where}: resolution {resolution} is below 8 pixels: for megapixels set resolution_type 'area'"
        )
    if resolution > (MAX_SIDE**2 / 1e6 if rtype == "area" else MAX_SIDE):
        unit = f"{MAX_SIDE**2 / 1e6:.0f} megapixels (resolution_type 'area')" if rtype == "area" else f"{MAX_SIDE} pixels"
        raise DataError(f"{where}: resolution {resolution:g} is more than {unit}: a training frame that large cannot fit")


def _media_spec(
    entry: MediaDatasetEntry, where: str, data: DataSection, config: RunConfig, text_cache: Path
) -> DatasetSpec:
    strategy = entry.caption_strategy or data.caption_strategy
    prompt = entry.instance_prompt if entry.instance_prompt is not None else data.instance_prompt
    if strategy == "instanceprompt" and not prompt:
        raise DataError(f"{where}: caption_strategy 'instanceprompt' needs instance_prompt")
    if strategy == "parquet" and entry.parquet is None:
        raise DataError(f"{where}: caption_strategy 'parquet' needs a 'parquet' block naming the metadata file (path)")
    rtype = entry.resolution_type or data.resolution_type
    resolution = entry.resolution if entry.resolution is not None else data.resolution
    _check_resolution(where, resolution, rtype)
    if entry.crop and entry.crop_aspect in ("closest", "random"):
        buckets = tuple(entry.crop_aspect_buckets or DEFAULT_ASPECT_BUCKETS)
    else:
        buckets = tuple(entry.crop_aspect_buckets or ())
    vae_cache = entry.cache_dir_vae or (Path(data.cache_dir) / "vae" / safe_name(entry.id))
    return DatasetSpec(
        id=entry.id,
        kind=entry.dataset_type,
        root=locate_input(entry.instance_data_dir, config),
        root_hint=config.paths.hint(entry.instance_data_dir, locate_input(entry.instance_data_dir, config)),
        source=entry.instance_data_dir,
        caption_strategy=strategy,
        instance_prompt=prompt,
        metadata=entry.parquet,
        metadata_path=locate_input(entry.parquet.path, config) if entry.parquet else None,
        crop=entry.crop,
        crop_style="center" if entry.crop_style == "centre" else entry.crop_style,
        crop_aspect=entry.crop_aspect,
        crop_aspect_buckets=buckets,
        resolution=resolution,
        resolution_type=rtype,
        minimum_image_size=entry.minimum_image_size
        if entry.minimum_image_size is not None
        else data.minimum_image_size,
        maximum_image_size=entry.maximum_image_size,
        target_downsample_size=entry.target_downsample_size,
        repeats=entry.repeats,
        probability=entry.probability,
        vae_cache=_output_path(vae_cache, config),
        text_cache=text_cache,
        where=where,
        type=entry.type,
        **_frames(entry, data),
    )


def _from_backend_file(config: RunConfig) -> DataLayout:
    data = config.data
    assert data.data_backend_config is not None
    path = locate_input(data.data_backend_config, config)
    if not path.is_file():
        raise DataError(f"data_backend_config: no file at {path}{config.paths.hint(data.data_backend_config, path)}")
    entries = parse_backend_file(path, config.data_backends)
    texts = {e.id: (w, e) for w, e in entries if isinstance(e, TextEmbedsEntry) and not e.disabled}
    conditioning = {e.id for _, e in entries if isinstance(e, ConditioningImageEmbedsEntry) and not e.disabled}
    defaults = [e for _, e in texts.values() if e.default]
    if len(defaults) > 1:
        raise DataError(
            f"data_backend_config {path}: {len(defaults)} text_embeds datasets are marked default"
            f" ({', '.join(e.id for e in defaults)}): mark one"
        )
    if not defaults and len(texts) > 1:
        raise DataError(f"data_backend_config {path}: several text_embeds datasets and none is 'default': true")
    default = defaults[0] if defaults else next((e for _, e in texts.values()), None)

    def text_dir(entry: TextEmbedsEntry | None) -> Path:
        if entry is None or not entry.cache_dir:
            return _output_path(Path(data.cache_dir) / "text", config)
        return _output_path(entry.cache_dir, config)

    layout = DataLayout(
        datasets=[],
        default_text_cache=text_dir(default),
        text_write_batch_size=(
            default.write_batch_size if default and default.write_batch_size else data.write_batch_size
        ),
    )
    for where, entry in entries:
        if not isinstance(entry, MediaDatasetEntry) or entry.disabled:
            continue
        if entry.text_embeds is not None and entry.text_embeds not in texts:
            raise DataError(
                f"{where}: text_embeds '{entry.text_embeds}' is not an enabled text_embeds dataset of this file"
            )
        if entry.conditioning_image_embeds is not None:
            if entry.conditioning_image_embeds not in conditioning:
                raise DataError(
                    f"{where}: conditioning_image_embeds '{entry.conditioning_image_embeds}' is not an enabled"
                    " conditioning_image_embeds dataset of this file"
                )
            layout.notes.append(
                f"dataset '{entry.id}' names conditioning_image_embeds '{entry.conditioning_image_embeds}': tuner"
                " caches a clip's conditioning (first-frame latents, image embeddings) in its own latent entry"
                " (cache_dir_vae), keyed by its content and the encoders, so that folder stays empty"
            )
        if entry.maximum_image_size is not None and not entry.crop:
            layout.notes.append(
                f"dataset '{entry.id}': maximum_image_size/target_downsample_size act before a crop and this dataset"
                " does not crop (crop: false): every file is simply resized to the training size"
            )
        own_text = text_dir(texts[entry.text_embeds][1]) if entry.text_embeds else layout.default_text_cache
        layout.datasets.append(_media_spec(entry, where, data, config, own_text))
    if not layout.datasets:
        raise DataError(f"data_backend_config {path}: no enabled video or image dataset (check 'disabled')")
    return layout


def _shorthand(config: RunConfig) -> DataLayout:
    data = config.data
    if data.instance_data_dir is None:
        raise DataError(
            "data.instance_data_dir is not set: point it at a folder of clips with .txt captions, or set"
            " data_backend_config to a backend file"
        )
    root = locate_input(data.instance_data_dir, config)
    if not root.is_dir():
        hint = config.paths.hint(data.instance_data_dir, root)
        raise DataError(f"data.instance_data_dir does not exist or is not a folder: {root}{hint}")
    cache = _output_path(data.cache_dir, config)
    _check_resolution("data.resolution", data.resolution, data.resolution_type)
    spec = DatasetSpec(
        id="data",
        kind="video",
        root=root,
        source=str(data.instance_data_dir),
        caption_strategy=data.caption_strategy,
        instance_prompt=data.instance_prompt,
        metadata=None,
        metadata_path=None,
        crop=False,
        crop_style="center",
        crop_aspect="square",
        crop_aspect_buckets=(),
        resolution=data.resolution,
        resolution_type=data.resolution_type,
        minimum_image_size=data.minimum_image_size,
        maximum_image_size=None,
        target_downsample_size=None,
        repeats=0,
        probability=1.0,
        vae_cache=cache / "vae",
        text_cache=cache / "text",
        num_frames=data.num_frames,
        min_frames=data.num_frames,
        max_frames=None,
        bucket_strategy="aspect_ratio",
        frame_interval=None,
        where="data.instance_data_dir",
    )
    return DataLayout([spec], cache / "text", data.write_batch_size)


def load_layout(config: RunConfig) -> DataLayout:
    """The datasets a run trains on, from the backend file or the ``[data]`` shorthand, each with its backend."""
    layout = _from_backend_file(config) if config.data.data_backend_config is not None else _shorthand(config)
    layout.backends.update({spec.type: config.data_backends[spec.type] for spec in layout.datasets})
    return layout

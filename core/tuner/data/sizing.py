"""How one file becomes a training sample: its frame count, training size and crop.

Pure functions of the file's probe info, the dataset's settings and the model's
strides, so the same inputs always give the same `Geometry` (and cache key).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuner.data.layout import DatasetSpec
    from tuner.data.probe import MediaInfo

__all__ = ["MAX_SIDE", "Geometry", "valid_frames", "frames_for", "measure", "target_size", "fit"]

MAX_SIDE = 16384  # pixels: one frame this wide already needs gigabytes; a larger size is a typo


@dataclass(frozen=True)
class Geometry:
    """Take ``frames`` frames, resize them to ``resize`` (w, h), crop ``width`` x ``height`` at ``crop``.

    Which frames: ``take`` lists them in training order (a frame may come twice
    when a clip is slower than the model's rate), by presentation timestamp, or
    by position in presentation order when ``by_index`` (a clip whose timestamps
    cannot be trusted); empty ``take``: the first ``frames`` frames.
    """

    frames: int
    width: int
    height: int
    resize: tuple[int, int]
    crop: tuple[int, int]
    aspect: float
    take: tuple[int, ...] = ()
    by_index: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.frames, self.height, self.width)

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}@{self.frames}"


def valid_frames(count: int, stride: int) -> int:
    """The longest length <= ``count`` the VAE accepts: ``k * stride + 1`` (any length for stride 1)."""
    if stride <= 1:
        return count
    return (count - 1) // stride * stride + 1 if count >= 1 else 0


def frames_for(spec: DatasetSpec, info: MediaInfo, stride: int) -> int | str:
    """Frames trained from this file, or why it is skipped."""
    if info.is_image:
        return 1  # images train as 1-frame clips, in video datasets too
    if spec.kind == "image":
        return "a video in an image dataset (set dataset_type 'video')"
    n = info.frames
    if n < spec.min_frames:
        return f"too short: {n} frames, fewer than min_frames {spec.min_frames}"
    if spec.max_frames is not None and n > spec.max_frames:
        return f"too long: {n} frames, more than max_frames {spec.max_frames}"
    if spec.num_frames is not None:
        wanted = valid_frames(spec.num_frames, stride)
        got = wanted if n >= wanted else valid_frames(n, stride)
    else:  # resolution_frames without num_frames: each clip keeps its own length
        got = n if not spec.frame_interval else n // spec.frame_interval * spec.frame_interval
        got = valid_frames(got, stride)
    if got < 1:
        return f"too short: {n} frames leave no usable length"
    return got


def measure(width: float, height: float, resolution_type: str) -> float:
    """A size in resolution_type's unit.

    The short side (pixel), the side of the square of equal area (pixel_area), or megapixels (area).
    """
    if resolution_type == "pixel":
        return min(width, height)
    if resolution_type == "pixel_area":
        return math.sqrt(width * height)
    return width * height / 1e6


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(value / multiple + 0.5) * multiple)


def target_size(aspect: float, resolution: float, resolution_type: str, multiple: int) -> tuple[int, int]:
    """``(width, height)`` of aspect ``aspect`` at ``resolution``, each a multiple of ``multiple``."""
    if resolution_type == "pixel":
        w, h = (resolution * aspect, resolution) if aspect >= 1 else (resolution, resolution / aspect)
    else:
        area = resolution**2 if resolution_type == "pixel_area" else resolution * 1e6
        w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
    return _round_to(w, multiple), _round_to(h, multiple)


def _cover(w: float, h: float, width: int, height: int) -> tuple[int, int]:
    """The size of ``w`` x ``h`` scaled (aspect kept) so it just covers ``width`` x ``height``."""
    s = max(width / w, height / h)
    return max(width, round(w * s)), max(height, round(h * s))


def fit(spec: DatasetSpec, info: MediaInfo, frames: int, multiple: int, rounding: int, seed: int) -> Geometry | str:
    """The geometry of one sample, or why it is skipped.

    ``seed`` (from the file's digest) picks random crops and aspects: latents are
    cached, so a file keeps the crop it drew until its content changes.
    """
    w, h = info.width, info.height
    rtype = spec.resolution_type
    size = measure(w, h, rtype)
    if spec.minimum_image_size and size < spec.minimum_image_size:
        return f"too small: {w}x{h} is {size:g} ({rtype}), below minimum_image_size {spec.minimum_image_size:g}"
    rng = random.Random(seed)
    if not spec.crop or spec.crop_aspect == "preserve":
        aspect = w / h
        if spec.bucket_strategy == "aspect_ratio":
            # Sizes come from the rounded aspect, so a bucket's samples share one shape.
            aspect = max(round(aspect, rounding), 10.0**-rounding)
    elif spec.crop_aspect == "square":
        aspect = 1.0
    elif spec.crop_aspect == "closest":
        aspect = min(spec.crop_aspect_buckets, key=lambda a: abs(math.log(a) - math.log(w / h)))
    else:
        aspect = rng.choice(spec.crop_aspect_buckets)
    width, height = target_size(aspect, spec.resolution, rtype, multiple)
    if not spec.crop:
        rw, rh = _cover(w, h, width, height)
        return Geometry(frames, width, height, (rw, rh), ((rw - width) // 2, (rh - height) // 2), aspect)
    # Cropping happens at the file's own scale, after an optional downsample of large files, so a crop
    # shows a detail rather than the whole frame; a file smaller than the crop is enlarged to fit it.
    sw, sh = float(w), float(h)
    if spec.maximum_image_size and spec.target_downsample_size and size > spec.maximum_image_size:
        ratio = spec.target_downsample_size / size
        s0 = math.sqrt(ratio) if rtype == "area" else ratio
        sw, sh = sw * s0, sh * s0
    rw, rh = _cover(sw, sh, width, height) if (sw < width or sh < height) else (round(sw), round(sh))
    if spec.crop_style == "random":
        left, top = rng.randint(0, rw - width), rng.randint(0, rh - height)
    elif spec.crop_style == "corner":
        left, top = 0, 0
    else:
        left, top = (rw - width) // 2, (rh - height) // 2
    return Geometry(frames, width, height, (rw, rh), (left, top), aspect)

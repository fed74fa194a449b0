"""Decoding clips and images into fixed-size frame tensors (PyAV, Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tuner.data.local import IMAGE_EXTENSIONS
from tuner.errors import DataError

__all__ = ["read_frames", "fit_square", "load_sample_pixels"]


def read_frames(path: Path, num_frames: int) -> np.ndarray:
    """The first ``num_frames`` frames of a clip (or the image, as one frame), ``(F, H, W, 3)`` uint8."""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        from PIL import Image

        with Image.open(path) as img:
            return np.array(img.convert("RGB"))[None]
    import av

    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) == num_frames:
                    break
    except (av.error.FFmpegError, IndexError) as exc:
        raise DataError(f"cannot decode {path}: {exc}") from None
    if len(frames) < num_frames:
        raise DataError(f"{path} has {len(frames)} frames, fewer than data.num_frames = {num_frames}")
    return np.stack(frames)


def fit_square(frames: np.ndarray, size: int) -> torch.Tensor:
    """Resize the short side to ``size`` and centre-crop: ``(F, 3, size, size)`` float in ``[-1, 1]``."""
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    h, w = video.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) != (h, w):
        video = F.interpolate(video, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    video = video[..., top : top + size, left : left + size]
    return (video / 127.5 - 1.0).clamp(-1.0, 1.0)


def load_sample_pixels(path: Path, num_frames: int, size: int) -> torch.Tensor:
    """Decode and fit one sample; images become 1-frame clips."""
    frames = read_frames(path, num_frames)
    return fit_square(frames, size)

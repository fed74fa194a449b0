"""Writing validation media: H.264 mp4 clips that play in a browser, and PNGs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

__all__ = ["to_uint8", "write_video", "write_image", "safe_filename"]


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in ``[0, 1]`` (or uint8) -> uint8, ``(F, H, W, 3)``."""
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def safe_filename(name: str) -> str:
    """A nickname made safe for every file system (letters, digits, '-', '_', '.')."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned[:100] or "untitled"


def write_video(frames: np.ndarray, path: Path, fps: int = 16) -> Path:
    """Write ``(F, H, W, 3)`` frames as H.264/yuv420p mp4, atomically.

    yuv420p needs even sizes; odd ones are padded by one edge pixel.
    """
    import av

    frames = to_uint8(np.asarray(frames))
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path


def write_image(frame: np.ndarray, path: Path) -> Path:
    """Write one ``(H, W, 3)`` frame as PNG, atomically."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    Image.fromarray(to_uint8(np.asarray(frame))).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path

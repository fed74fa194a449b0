"""Synthetic captioned clips (coloured shapes moving over a background).

Used by ``tuner demo`` and the test fixtures: a model can visibly learn them in
a few dozen steps, and nothing has to be downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tuner.validate.media import write_video

__all__ = ["SHAPES", "render_clip", "write_synthetic_clips"]

_COLORS = {"red": (220, 40, 40), "green": (40, 200, 70), "blue": (40, 80, 230), "yellow": (235, 215, 40)}
_BACKGROUNDS = {"black": (10, 10, 10), "white": (240, 240, 240), "grey": (120, 120, 120)}
_DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
SHAPES = ("square", "circle")


def render_clip(
    shape: str, color: str, background: str, direction: str, num_frames: int, width: int, height: int
) -> np.ndarray:
    """``(F, H, W, 3)`` uint8 frames of one shape crossing the frame."""
    yy, xx = np.mgrid[0:height, 0:width]
    radius = max(2, min(width, height) // 6)
    dx, dy = _DIRECTIONS[direction]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for i in range(num_frames):
        t = i / max(1, num_frames - 1)
        cx = width / 2 + dx * (t - 0.5) * (width - 2 * radius)
        cy = height / 2 + dy * (t - 0.5) * (height - 2 * radius)
        if shape == "circle":
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        else:
            mask = (np.abs(xx - cx) <= radius) & (np.abs(yy - cy) <= radius)
        frames[i] = _BACKGROUNDS[background]
        frames[i][mask] = _COLORS[color]
    return frames


def write_synthetic_clips(
    folder: Path, count: int = 4, num_frames: int = 17, width: int = 64, height: int = 48, fps: int = 16
) -> list[Path]:
    """Write ``count`` mp4 clips with same-name ``.txt`` captions into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    colors, backgrounds, directions = list(_COLORS), list(_BACKGROUNDS), list(_DIRECTIONS)
    paths = []
    for i in range(count):
        shape, color = SHAPES[i % len(SHAPES)], colors[i % len(colors)]
        background, direction = backgrounds[i % len(backgrounds)], directions[i % len(directions)]
        frames = render_clip(shape, color, background, direction, num_frames, width, height)
        path = write_video(frames, folder / f"clip_{i:03d}.mp4", fps=fps)
        caption = f"a {color} {shape} moving {direction} on a {background} background"
        path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        paths.append(path)
    return paths

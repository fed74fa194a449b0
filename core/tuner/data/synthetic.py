"""Synthetic captioned clips (coloured shapes moving over a background).

Used by ``tuner demo`` and the test fixtures: a model can visibly learn them in
a few dozen steps, and nothing has to be downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tuner.media import write_video

__all__ = [
    "SHAPES",
    "render_clip",
    "write_synthetic_clips",
    "write_synthetic_image",
    "write_broken_files",
    "write_sideways_clip",
    "write_timed_clip",
    "read_clock",
]

_COLORS = {"red": (220, 40, 40), "green": (40, 200, 70), "blue": (40, 80, 230), "yellow": (235, 215, 40)}
_BACKGROUNDS = {"black": (10, 10, 10), "white": (240, 240, 240), "grey": (120, 120, 120)}
_DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
SHAPES = ("square", "circle")


def render_clip(
    shape: str,
    color: str,
    background: str,
    direction: str,
    num_frames: int,
    width: int,
    height: int,
    variant: int = 0,
) -> np.ndarray:
    """``(F, H, W, 3)`` uint8 frames of one shape crossing the frame.

    ``variant`` > 0 moves the shape's track sideways and then shades the background, so
    clips of the same caption still differ.
    """
    yy, xx = np.mgrid[0:height, 0:width]
    radius = max(2, min(width, height) // 6)
    dx, dy = _DIRECTIONS[direction]
    span = max(1, (height if dx else width) - 2 * radius)
    lane = (variant + span // 2) % span - span // 2  # 0, 1, 2, ... then wrapping to the far side
    shade = (variant // span) * 9 % 100
    base = np.array(_BACKGROUNDS[background])
    base = np.clip(base + (shade if base.mean() < 128 else -shade), 0, 255).astype(np.uint8)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for i in range(num_frames):
        t = i / max(1, num_frames - 1)
        cx = width / 2 + dx * (t - 0.5) * (width - 2 * radius) + (lane if dy else 0)
        cy = height / 2 + dy * (t - 0.5) * (height - 2 * radius) + (lane if dx else 0)
        if shape == "circle":
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        else:
            mask = (np.abs(xx - cx) <= radius) & (np.abs(yy - cy) <= radius)
        frames[i] = base
        frames[i][mask] = _COLORS[color]
    return frames


def _caption(i: int) -> tuple[str, str, str, str]:
    colors, backgrounds, directions = list(_COLORS), list(_BACKGROUNDS), list(_DIRECTIONS)
    return (
        SHAPES[i % len(SHAPES)],
        colors[i % len(colors)],
        backgrounds[i % len(backgrounds)],
        directions[i % len(directions)],
    )


def write_synthetic_clips(
    folder: Path,
    count: int = 4,
    num_frames: int = 17,
    width: int = 64,
    height: int = 48,
    fps: int = 16,
    *,
    prefix: str = "clip",
    start: int = 0,
    captions: bool = True,
) -> list[Path]:
    """Write ``count`` mp4 clips (``{prefix}_{i:03d}.mp4``) with same-name ``.txt`` captions into ``folder``.

    Captions repeat every 12 clips; the pictures do not: each round of 12 has its own track
    (then background shade), so every file has its own content.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        shape, color, background, direction = _caption(i)
        frames = render_clip(shape, color, background, direction, num_frames, width, height, variant=i // 12)
        path = write_video(frames, folder / f"{prefix}_{i:03d}.mp4", fps=fps)
        if captions:
            caption = f"a {color} {shape} moving {direction} on a {background} background"
            path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def write_synthetic_image(path: Path, width: int = 64, height: int = 48, index: int = 0, caption: bool = True) -> Path:
    """Write one PNG still of a shape (and its ``.txt`` caption)."""
    from PIL import Image

    shape, color, background, direction = _caption(index)
    frame = render_clip(shape, color, background, direction, 1, width, height)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame).save(path)
    if caption:
        path.with_suffix(".txt").write_text(f"a still {color} {shape} on a {background} background\n", encoding="utf-8")
    return path


def write_broken_files(folder: Path, num_frames: int = 17, width: int = 64, height: int = 48) -> dict[str, Path]:
    """Files a real dataset ends up with, each captioned: empty, garbage, cut-off clips and a cut-off image.

    ``truncated_tail.mp4`` loses its index (the moov box, written last), so it cannot be opened;
    ``truncated_frames.mp4`` keeps its index (written first) but loses frame data, so it opens and
    fails while decoding; ``truncated.png`` opens and fails while decoding.
    """
    import os

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    files = {
        name: folder / name
        for name in ("empty.mp4", "garbage.mp4", "truncated_tail.mp4", "truncated_frames.mp4", "truncated.png")
    }
    files["empty.mp4"].write_bytes(b"")
    files["garbage.mp4"].write_bytes(os.urandom(2048))
    frames = render_clip("circle", "red", "white", "left", num_frames, width, height)
    tail = write_video(frames, files["truncated_tail.mp4"])
    tail.write_bytes(tail.read_bytes()[: tail.stat().st_size // 2])
    _write_faststart(frames, files["truncated_frames.mp4"])
    data = files["truncated_frames.mp4"].read_bytes()
    files["truncated_frames.mp4"].write_bytes(data[: len(data) * 4 // 5])
    Image.fromarray(frames[0]).save(files["truncated.png"])
    png = files["truncated.png"].read_bytes()
    files["truncated.png"].write_bytes(png[: len(png) // 2])
    for path in files.values():
        path.with_suffix(".txt").write_text(f"a broken file {path.stem}\n", encoding="utf-8")
    return files


def _write_faststart(frames: np.ndarray, path: Path, fps: int = 16) -> None:
    import av

    with av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_sideways_clip(frames: np.ndarray, path: Path, degrees: int, fps: int = 16) -> Path:
    """Write upright ``(F, H, W, 3)`` frames as a phone does: pixels turned, and a display matrix saying
    to turn them back by ``degrees`` counter-clockwise (90, 180 or -90)."""
    import av

    stored = np.ascontiguousarray(np.rot90(frames, k=-(degrees // 90), axes=(1, 2)))
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = stored.shape[2], stored.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.set_display_rotation(degrees)
        for frame in stored:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


_CLOCK_BIT = 8  # pixels per side of one bit of the clock code


def write_timed_clip(path: Path, times: np.ndarray, width: int = 160, height: int = 32, fps: float = 30) -> Path:
    """Write frames shown at ``times`` (seconds, increasing; a variable rate is fine), each carrying its time.

    The top band holds the frame's time in milliseconds as white 8x8 blocks (bit k at
    x = 8k, `read_clock` reads it back through any codec); below, a bar moves right
    at 40 pixels a second, the same motion at any rate. ``fps`` is the rate the header states.
    """
    import av
    from fractions import Fraction

    tb = Fraction(1, 90000)
    bits = width // _CLOCK_BIT
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = tb
        for t in times:
            frame = np.zeros((height, width, 3), dtype=np.uint8)
            ms = int(round(float(t) * 1000))
            for k in range(bits):
                if ms >> k & 1:
                    frame[:_CLOCK_BIT, k * _CLOCK_BIT : (k + 1) * _CLOCK_BIT] = 255
            x = int(round(float(t) * 40)) % width
            frame[_CLOCK_BIT + 2 :, max(0, x - 2) : x + 2] = (255, 200, 0)
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts, picture.time_base = int(round(float(t) / tb)), tb
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_clock(frame: np.ndarray) -> float:
    """The time in seconds a `write_timed_clip` frame (``(H, W, 3)``, decoded at its own size) carries."""
    band = frame[: _CLOCK_BIT, :, :].astype(np.float32).mean(axis=(0, 2))
    bits = frame.shape[1] // _CLOCK_BIT
    ms = sum(1 << k for k in range(bits) if band[k * _CLOCK_BIT + 2 : (k + 1) * _CLOCK_BIT - 2].mean() > 128)
    return ms / 1000

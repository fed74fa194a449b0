"""Which frames of a clip train: the clip on the model's clock, then the windows a dataset takes from it.

Two steps, both pure functions of the probe's timestamps and the dataset's
settings (so the same inputs always give the same windows and cache keys):

* `clip_clock`: the clip resampled to the model's frame rate (`tuner.data.timing`),
  or its frames as they are (``resample_fps = false``, or a family without a rate);
* `plan_windows`: the windows of ``frame_extraction`` over that clock, as
  ``(start, length)`` in training frames. The names follow musubi-tuner's:
  ``head`` (the start), ``chunk`` (back-to-back windows), ``slide`` (a window every
  ``frame_stride`` frames), ``uniform`` (``frame_sample`` windows spread over the
  clip), ``full`` (the whole clip, up to ``max_frames``) and ``random`` (one window
  per epoch, drawn from the run's seed: `random_start`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from tuner.data.timing import MAX_FPS, MIN_FPS, resample

if TYPE_CHECKING:
    from tuner.data.layout import DatasetSpec
    from tuner.data.probe import MediaInfo

__all__ = [
    "ClipClock",
    "clip_clock",
    "plan_windows",
    "random_start",
    "file_windows",
    "clock_summary",
]

Action = Literal["resampled", "kept", "repeated", "raw"]


@dataclass(frozen=True)
class ClipClock:
    """A clip as training sees it: which source frame each training frame is, and how it came to be.

    :ivar source: per training frame, the source frame's position in presentation order.
    :ivar keys: per source frame, what the decoder finds it by: its pts, or its position (``by_index``).
    :ivar seconds: per source frame, its time from the first frame.
    :ivar found_fps: the clip's rate (its timestamps', or ``source_fps``).
    :ivar fps: the training clock's rate; ``None`` for frames taken as they are.
    :ivar action: what was done: ``resampled``, ``kept`` (already at the rate), ``repeated``
        (slower than the rate: some frames come twice) or ``raw`` (not resampled).
    """

    source: np.ndarray
    keys: tuple[int, ...]
    seconds: np.ndarray
    found_fps: float
    fps: float | None
    action: Action
    by_index: bool

    def __len__(self) -> int:
        return len(self.source)

    def take(self, start: int, length: int) -> tuple[int, ...]:
        """The decoder's keys of the window ``[start, start + length)``."""
        return tuple(self.keys[int(j)] for j in self.source[start : start + length])

    def start_seconds(self, start: int) -> float:
        return float(self.seconds[int(self.source[start])]) if len(self.source) else 0.0


def clip_clock(spec: DatasetSpec, info: MediaInfo, model_fps: float | None) -> ClipClock | str:
    """The clip of ``info`` on the training clock of ``spec`` (the family's ``model_fps`` by default), or why not."""
    timing = info.timing
    n = info.frames
    target = spec.target_fps or model_fps
    if timing is None:  # an image, or a clip probed without timestamps: its frames in order
        return ClipClock(np.arange(n), tuple(range(n)), np.zeros(n), 0.0, None, "raw", True)
    by_index = bool(timing.problem)
    keys = tuple(range(n)) if by_index else timing.pts
    if spec.source_fps:
        seconds = np.arange(n) / spec.source_fps
        found = float(spec.source_fps)
    else:
        seconds, found = timing.seconds, timing.fps
    if not spec.resample_fps or target is None:
        return ClipClock(np.arange(n), keys, seconds, found, None, "raw", by_index)
    if not spec.source_fps:
        if timing.problem:
            return (
                f"{timing.problem}: set video.source_fps to time its frames by their order, or video.resample_fps"
                " = false to take them as they are"
            )
        if n >= 2 and not MIN_FPS <= found <= MAX_FPS:
            return (
                f"its timestamps say {found:.4g} fps (its header {timing.header_fps:.4g} fps), not a rate footage"
                f" is filmed at: set video.source_fps to the rate it was filmed at"
            )
    source = resample(seconds, target)
    if len(source) == n and (source == np.arange(n)).all():
        action: Action = "kept"
    elif found < target * 0.995:
        action = "repeated"
    else:
        action = "resampled"
    return ClipClock(source, keys, seconds, found, float(target), action, by_index)


def plan_windows(
    mode: str, n: int, lengths: Sequence[int], *, stride: int = 1, sample: int = 1
) -> list[tuple[int, int]]:
    """``(start, length)`` of each window ``mode`` takes from a clip of ``n`` training frames.

    ``full`` and ``random`` are sized and placed by the caller (one window each); here
    they give the head window of each length.
    """
    out: list[tuple[int, int]] = []
    for length in lengths:
        if length > n or length < 1:
            continue
        if mode == "chunk":
            starts = list(range(0, n - length + 1, length))
        elif mode == "slide":
            starts = list(range(0, n - length + 1, max(1, stride)))
        elif mode == "uniform":
            spread = np.linspace(0, n - length, max(1, sample))
            starts = sorted({int(round(x)) for x in spread})
        else:
            starts = [0]
        out += [(s, length) for s in starts]
    return out


def random_start(n: int, length: int, seed: int, digest: str, epoch: int) -> int:
    """The start of a ``random`` window in epoch ``epoch``: a function of the run's seed, the clip and the epoch."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, int(digest[:8], 16), length, epoch])
    return int(rng.integers(0, n - length + 1))


def file_windows(
    spec: DatasetSpec,
    info: MediaInfo,
    digest: str,
    *,
    model_fps: float | None,
    stride: int,
    seed: int = 0,
    epoch: int = 0,
    limit: int | None = None,
) -> tuple[ClipClock, list[tuple[int, int]]] | str:
    """The clip's clock and its windows ``(start, length)`` under ``spec``, or why the clip is skipped.

    ``spec``'s frame counts are already capped to what the family takes; ``stride``
    is the family's frame rule (lengths of ``stride * k + 1``).
    """
    from dataclasses import replace

    from tuner.data.sizing import frames_for, valid_frames

    clock = clip_clock(spec, info, model_fps)
    if isinstance(clock, str):
        return clock
    n = len(clock)
    rate = f" at {clock.fps:g} fps" if clock.fps else ""
    seconds = f"{n / clock.fps:.2f} s, " if clock.fps else ""
    mode = spec.frame_extraction
    if n < spec.min_frames:
        return f"too short: {n} frames{rate} ({seconds}fewer than min_frames {spec.min_frames})"
    if mode == "full":  # max_frames caps the one window here, as in musubi-tuner
        length = valid_frames(min(n, spec.max_frames or n), stride)
        return (clock, [(0, length)]) if length >= 1 else f"too short: {n} frames{rate} leave no usable length"
    if spec.max_frames is not None and n > spec.max_frames:
        return f"too long: {n} frames{rate}, more than max_frames {spec.max_frames}"
    if spec.target_frames:
        lengths = sorted(set(spec.target_frames))
    else:
        frames = frames_for(spec, replace(info, frames=n), stride)
        if isinstance(frames, str):
            return frames
        lengths = [frames if limit is None else min(frames, limit)]
    windows = plan_windows(
        "head" if mode == "random" else mode, n, lengths, stride=spec.frame_stride, sample=spec.frame_sample
    )
    if mode == "random":
        windows = [(random_start(n, length, seed, digest, epoch), length) for _, length in windows]
    if not windows:
        return f"too short: {n} frames{rate} ({seconds}shorter than one window of {min(lengths)} frames)"
    return clock, windows


def _rate(fps: float) -> str:
    return f"{fps:.2f}".rstrip("0").rstrip(".")


def clock_summary(dataset: str, extraction: str, clips: Sequence[tuple[ClipClock, list[tuple[int, int]]]]) -> list[str]:
    """What the report says of a dataset's clips: the rates found, what was done, the windows taken."""
    groups: dict[tuple[str, str, str], int] = {}
    for clock, _ in clips:
        found = _rate(clock.found_fps) if clock.found_fps else "?"
        key = (clock.action, found, _rate(clock.fps) if clock.fps else "")
        groups[key] = groups.get(key, 0) + 1
    words = {
        "resampled": "resampled to {to} fps",
        "kept": "kept (already {to} fps)",
        "repeated": "below {to} fps: resampled to {to} fps by showing frames twice (video.resample_fps = false"
        " keeps its own frames, at its own rate)",
        "raw": "every frame used at the file's own rate",
    }
    parts = [
        f"{n} clip(s) at {found} fps {words[action].format(to=to)}"
        for (action, found, to), n in sorted(groups.items(), key=lambda kv: -kv[1])
    ]
    lines = [f"dataset '{dataset}': " + "; ".join(parts)]
    windows = sum(len(w) for _, w in clips)
    timed = [c for c, _ in clips if c.fps]
    if timed:
        total = sum(len(c) / c.fps for c in timed if c.fps)
        covered = sum(len({i for s, n in w for i in range(s, s + n)}) / c.fps for c, w in clips if c.fps)
        span = f", covering {covered:.1f} s of {total:.1f} s of footage"
    else:
        span = ""
    lines.append(
        f"dataset '{dataset}': frame_extraction {extraction}: {windows} window(s) from {len(clips)} clip(s){span}"
    )
    return lines

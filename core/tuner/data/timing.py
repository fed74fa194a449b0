"""When each frame of a clip is shown, and which frames a model running at its own frame rate sees.

A clip's frames are timed by their presentation timestamps (PTS), read once
from the container's packets at probe time (no decoding). Phone clips often
have a variable frame rate, so counting frames is not counting time: a model
trained at 16 fps that is fed a 30 fps clip frame by frame learns motion almost
twice too fast. `resample` picks, for each tick of the model's clock, the frame
shown nearest to it, so every clip comes out evenly timed at the model's rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = ["ClipTiming", "read_timing", "resample", "MIN_FPS", "MAX_FPS"]

# A rate outside these bounds is a broken header or timestamps, not footage: the clip needs source_fps.
MIN_FPS = 1.0
MAX_FPS = 240.0


@dataclass(frozen=True)
class ClipTiming:
    """A clip's frame times: ``pts`` (sorted, in ``time_base`` units) and what the header says.

    :ivar pts: each frame's presentation timestamp, in presentation order.
    :ivar time_base: seconds per pts unit, as ``(numerator, denominator)``.
    :ivar header_fps: the rate the container's header states (0 when it states none).
    :ivar problem: why the timestamps cannot time the frames (repeating, going
        backwards, missing), or ``""``; such a clip is timed only by ``source_fps``.
    """

    pts: tuple[int, ...]
    time_base: tuple[int, int]
    header_fps: float
    problem: str = ""

    @property
    def seconds(self) -> np.ndarray:
        """Each frame's time in seconds from the first frame."""
        num, den = self.time_base
        p = np.asarray(self.pts, dtype=np.float64)
        return (p - p[0]) * num / den if len(p) else p

    @property
    def fps(self) -> float:
        """The rate the timestamps show: frames per second over the clip (0 with fewer than two frames)."""
        s = self.seconds
        if len(s) < 2 or s[-1] <= 0 or self.problem:
            return 0.0
        return (len(s) - 1) / float(s[-1])

    def to_json(self) -> dict[str, Any]:
        """A compact form for the probe index: evenly spaced timestamps are stored as start and step."""
        out: dict[str, Any] = {"tb": list(self.time_base), "header": self.header_fps, "problem": self.problem}
        steps = np.diff(np.asarray(self.pts, dtype=np.int64))
        if len(self.pts) >= 2 and (steps == steps[0]).all():
            out.update(start=self.pts[0], step=int(steps[0]), count=len(self.pts))
        else:
            out["pts"] = list(self.pts)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClipTiming:
        if "pts" in data:
            pts = tuple(int(p) for p in data["pts"])
        else:
            pts = tuple(range(data["start"], data["start"] + data["step"] * data["count"], data["step"]))
        return cls(pts, (int(data["tb"][0]), int(data["tb"][1])), float(data["header"]), str(data["problem"]))


def _header_fps(stream: Any) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def read_timing(container: Any, stream: Any) -> ClipTiming:
    """Every frame's timestamp from the packets of ``stream`` (demuxing only, no decoding); rewinds after."""
    raw: list[int | None] = []
    for packet in container.demux(stream):
        if not packet.size or getattr(packet, "is_discard", False):
            continue  # a flush packet, or a frame an edit list hides
        raw.append(packet.pts if packet.pts is not None else packet.dts)
    container.seek(0)
    tb = stream.time_base or Fraction(1, 1)
    header = _header_fps(stream)
    if not raw or any(p is None for p in raw):
        return ClipTiming(tuple(range(len(raw))), (1, 1), header, "its frames carry no timestamps")
    pts = [int(p) for p in raw if p is not None]
    problem = ""
    ordered = sorted(pts)
    if len(set(ordered)) < len(ordered):
        dup = next(i for i in range(1, len(ordered)) if ordered[i] == ordered[i - 1])
        problem = f"timestamps repeat (two frames at {float(ordered[dup] * tb):.3f} s)"
    elif not stream.codec_context.has_b_frames and ordered != pts:
        # Without frame reordering the packets come in display order, so a decrease is a broken file.
        back = next(i for i in range(1, len(pts)) if pts[i] < pts[i - 1])
        problem = f"timestamps go backwards (frame {back} at {float(pts[back] * tb):.3f} s)"
    return ClipTiming(tuple(ordered), (tb.numerator, tb.denominator), header, problem)


def resample(times: np.ndarray, fps: float) -> np.ndarray:
    """For each tick of a ``fps`` clock from the first frame, the index of the frame shown nearest to it.

    ``times``: the frames' times in seconds, increasing, from 0. Ticks run while
    the nearest frame is within half a source frame of them, so a clip at ``fps``
    already comes back whole and unchanged. A clip slower than ``fps`` gives
    some frames twice (it has fewer frames than ticks).
    """
    if len(times) < 2:
        return np.zeros(len(times), dtype=np.int64)
    half_frame = float(times[-1]) / (len(times) - 1) / 2
    ticks = np.arange(int(np.floor((times[-1] + half_frame) * fps + 1e-9)) + 1) / fps
    right = np.clip(np.searchsorted(times, ticks), 1, len(times) - 1)
    left = right - 1
    # The nearer neighbour; a tie goes to the earlier frame, so the choice never depends on rounding order.
    nearer_right = (times[right] - ticks) < (ticks - times[left])
    return np.where(nearer_right, right, left).astype(np.int64)

"""The curves a run page draws, downsampled on the server.

A browser draws a few thousand points at once without effort, not 100k per
series redrawn every second, so every series is cut into at most ``points``
buckets of consecutive steps: the bucket's mean is the raw curve (with its min
and max for the loss, so a spike is not averaged away), the smoothed loss is a
trailing mean over ~1 % of the run, computed on the full series first.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tuner.serve.runlog import RunLog

__all__ = ["curves", "DEFAULT_POINTS"]

DEFAULT_POINTS = 1500
_SHOWN = ("loss", "lr", "grad_norm", "eval_loss", "step_time")


def _trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` finite values at each index (NaNs skipped)."""
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    hi = np.arange(1, len(values) + 1)
    lo = np.maximum(hi - window, 0)
    n = counts[hi] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[hi] - sums[lo]) / np.maximum(n, 1), np.nan)


def _buckets(n: int, points: int) -> np.ndarray:
    """Start index of each bucket of consecutive records (one per record when they fit)."""
    if n <= points:
        return np.arange(n)
    return np.unique(np.linspace(0, n, points, endpoint=False).astype(np.int64))


def _reduce(values: np.ndarray, starts: np.ndarray, how: str) -> np.ndarray:
    if len(starts) == len(values):
        return values
    finite = np.isfinite(values)
    if how == "mean":
        sums = np.add.reduceat(np.where(finite, values, 0.0), starts)
        counts = np.add.reduceat(finite.astype(np.int64), starts)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    fill, op = (np.inf, np.minimum) if how == "min" else (-np.inf, np.maximum)
    out = op.reduceat(np.where(finite, values, fill), starts)
    return np.where(np.isfinite(out), out, np.nan)


def _listed(values: np.ndarray) -> list[float | None]:
    """JSON has no NaN: gaps are null, which the chart leaves as gaps."""
    return [None if math.isnan(v) else round(float(v), 7) for v in values]


def curves(log: RunLog, points: int = DEFAULT_POINTS) -> dict[str, Any]:
    """Series of the run page's charts, each at most ``points`` long, plus the σ histogram and skipped steps."""
    points = max(10, min(int(points), 20_000))
    steps = np.frombuffer(log.steps, dtype=np.int64) if log.steps else np.zeros(0, dtype=np.int64)
    n = len(steps)
    starts = _buckets(n, points)
    ends = np.append(starts[1:], n) - 1 if n else starts
    out: dict[str, Any] = {"steps": steps[ends].tolist() if n else [], "series": {}, "records": n}
    metrics = {k: np.frombuffer(v, dtype=np.float64) for k, v in log.metrics.items() if len(v) == n}
    for key in [k for k in _SHOWN if k in metrics] + sorted(k for k in metrics if k.endswith("_loss") and k not in _SHOWN):
        if np.isfinite(metrics[key]).any():
            out["series"][key] = _listed(_reduce(metrics[key], starts, "mean"))
    if "loss" in metrics and n:
        loss = metrics["loss"]
        out["series"]["loss_min"] = _listed(_reduce(loss, starts, "min"))
        out["series"]["loss_max"] = _listed(_reduce(loss, starts, "max"))
        smooth = _trailing_mean(loss, max(5, n // 100))
        out["series"]["loss_smooth"] = _listed(smooth[ends])
    skipped = metrics.get("skipped")
    out["skipped_steps"] = steps[np.nan_to_num(skipped) > 0][-500:].tolist() if skipped is not None else []
    out["skipped_count"] = int(np.sum(np.nan_to_num(skipped) > 0)) if skipped is not None else 0
    sigma = metrics.get("sigma_mean")
    if sigma is not None and np.isfinite(sigma).any():
        counts, edges = np.histogram(sigma[np.isfinite(sigma)], bins=20, range=(0.0, 1.0))
        out["sigma_hist"] = {"counts": counts.tolist(), "edges": [round(float(e), 3) for e in edges]}
    return out

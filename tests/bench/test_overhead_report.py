"""bench/overhead.py prints each round's ratio and their spread, so one run shows whether a ratio is noise."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))

import overhead  # noqa: E402


def loop(step: float, cpu: float) -> overhead.Loop:
    return overhead.Loop([step, step * 2, step], 1.0, cpu)


def test_each_rounds_ratio_and_their_range_and_iqr(capsys):
    bare = [loop(0.100, 0.2), loop(0.100, 0.2), loop(0.100, 0.2), loop(0.100, 0.2)]
    tuner = [loop(0.101, 0.2), loop(0.130, 0.3), loop(0.099, 0.2), loop(0.102, 0.2)]
    walls, cpus = overhead.round_ratios(bare, tuner)
    assert [round(w, 3) for w in walls] == [1.01, 1.3, 0.99, 1.02]
    assert [round(c, 3) for c in cpus] == [1.0, 1.5, 1.0, 1.0]
    assert overhead.spread(walls[:3]) == "1.010 1.300 0.990  (range 0.990-1.300)"
    assert "IQR 0.995-1.230" in overhead.spread(walls)
    overhead.report("row", bare, tuner, 1.02)
    out = capsys.readouterr().out
    assert "per-round ratios        wall 1.010 1.300 0.990 1.020  (range 0.990-1.300, IQR" in out
    assert "CPU  1.000 1.500 1.000 1.000" in out

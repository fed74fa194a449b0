"""The guide's two example `tread_config` values, for the docs' readers, the tests and the benchmark.

``GUIDE_ONE_ROUTE`` is the conservative start: 10% of the tokens skip every block from the third to
the second to last. ``GUIDE_FIVE_ROUTES`` is the progressive set written for Wan 1.3B's 30 blocks.
"""

from __future__ import annotations

__all__ = ["GUIDE_ONE_ROUTE", "GUIDE_FIVE_ROUTES"]

GUIDE_ONE_ROUTE = {"routes": [{"selection_ratio": 0.1, "start_layer_idx": 2, "end_layer_idx": -2}]}
GUIDE_FIVE_ROUTES = {
    "routes": [
        {"selection_ratio": 0.1, "start_layer_idx": 2, "end_layer_idx": 8},
        {"selection_ratio": 0.25, "start_layer_idx": 9, "end_layer_idx": 11},
        {"selection_ratio": 0.35, "start_layer_idx": 12, "end_layer_idx": 15},
        {"selection_ratio": 0.25, "start_layer_idx": 16, "end_layer_idx": 23},
        {"selection_ratio": 0.1, "start_layer_idx": 24, "end_layer_idx": -2},
    ]
}

"""tuner's memory plugin: group offload, model CPU offload, block swap, chunked feed-forward, start-up offload."""

from __future__ import annotations

__all__: list[str] = []

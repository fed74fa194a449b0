"""tuner's CREPA plugin: cross-frame representation alignment of one block's hidden states to DINOv2 features."""

from __future__ import annotations

__all__: list[str] = []

"""tuner's Wan 2.1 model family plugin (text-to-video LoRA)."""

from __future__ import annotations

__all__: list[str] = []

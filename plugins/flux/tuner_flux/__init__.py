"""tuner's Flux model family plugin (FLUX.1 text-to-image LoRA and LyCORIS)."""

from __future__ import annotations

__all__: list[str] = []

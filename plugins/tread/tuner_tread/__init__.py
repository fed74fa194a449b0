"""tuner's TREAD plugin: random token routing that lets latent tokens skip spans of blocks in training."""

from __future__ import annotations

__all__: list[str] = []

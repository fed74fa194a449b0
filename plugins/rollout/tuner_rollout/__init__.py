"""tuner's scheduled sampling (rollout) plugin: train on inputs the model denoised itself, with ReflexFlow terms."""

from __future__ import annotations

__all__: list[str] = []

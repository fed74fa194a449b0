"""tuner's attention plugin: pick the denoiser's attention kernel from diffusers' attention dispatcher."""

from __future__ import annotations

__all__: list[str] = []

"""tuner's quantization plugin: a quantized frozen base (optimum-quanto) under a full-precision adapter."""

from __future__ import annotations

__all__: list[str] = []

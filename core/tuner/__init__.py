"""tuner: fine-tune diffusion models with adapters, video first.

Importing this package is cheap on purpose: torch, diffusers and every plugin
load only when a command needs them.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]

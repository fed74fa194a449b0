"""tuner: fine-tune diffusion models with adapters, video first.

Importing this package is cheap on purpose: torch, diffusers and every plugin
load only when a command needs them. A plugin marks its hook implementations
with ``@tuner.hookimpl`` (``from tuner import hookimpl``); the hooks are
documented in `tuner.hookspecs`.
"""

from __future__ import annotations

from tuner.hookspecs import hookimpl  # pluggy only: the hook specs import nothing heavy at module level

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]

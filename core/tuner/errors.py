"""Errors the user can act on.

Every error raised for bad input is a `TunerError`: the CLI prints its message as
one line and exits non-zero, without a traceback. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

__all__ = ["TunerError", "ConfigError", "PluginError", "DataError", "CheckpointError"]


class TunerError(Exception):
    """Base class: the message alone tells the user what is wrong and how to fix it."""


class ConfigError(TunerError):
    """A config file, key or value is wrong."""


class PluginError(TunerError):
    """A plugin is unknown, cannot load, or cannot work on this machine."""


class DataError(TunerError):
    """A dataset is missing, empty or unusable."""


class CheckpointError(TunerError):
    """A checkpoint cannot be found or read."""

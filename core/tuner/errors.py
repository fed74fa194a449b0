"""Errors the user can act on.

Every error raised for bad input is a `TunerError`: the CLI prints its message as
one line and exits non-zero, without a traceback. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

__all__ = ["TunerError", "ConfigError", "PluginError", "DataError", "CheckpointError", "did_you_mean", "printable", "shown"]

# Control characters, line separators and bidirectional overrides: a file name holding one could start a
# line of its own in a log, move the cursor, or show other text than it holds.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with every control character written as its escape (``\\n``, ``\\x1b``): one line, shown as is."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def shown(text: str) -> str:
    """``text`` (a config key, a plugin's name) as a message shows it: on one line, control characters escaped."""
    return text if text.isprintable() else ascii(text)[1:-1]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing: the tail of an error message."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


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

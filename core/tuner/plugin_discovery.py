"""Where plugins come from: the core's built-in ones and the installed ``tuner.plugins`` entry points.

`tuner.plugins.PluginHost` activates what this module finds and loads; nothing here registers a
plugin or calls a hook, and importing it loads no plugin.
"""

from __future__ import annotations

import importlib
import os
from importlib import metadata

from tuner.errors import PluginError

__all__ = [
    "ENTRY_POINT_GROUP",
    "DISABLE_AUTOLOAD_ENV",
    "BUILTIN_PLUGINS",
    "installed_plugins",
    "load_builtin",
    "load_entry_point",
]

ENTRY_POINT_GROUP = "tuner.plugins"
# Set to 1 to ignore installed entry points (tests that want a clean host,
# or to rule plugins out while debugging).
DISABLE_AUTOLOAD_ENV = "TUNER_DISABLE_PLUGIN_AUTOLOAD"
# The core's own settings and reporting ride the same bus as third-party
# plugins: (name, "module" or "module:Class"); a class is instantiated per host.
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("core", "tuner.sections"),
    ("jsonlog", "tuner.report.jsonlog:JsonLog"),
    ("console", "tuner.report.console:ConsoleLog"),
    ("trackers", "tuner.report.trackers:Trackers"),
    ("webhooks", "tuner.report.webhooks:Webhooks"),
    ("hub", "tuner.report.hub:Hub"),
)


def installed_plugins() -> dict[str, metadata.EntryPoint]:
    """Entry points in the ``tuner.plugins`` group, by name (nothing is imported)."""
    if os.environ.get(DISABLE_AUTOLOAD_ENV, "") not in ("", "0"):
        return {}
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_builtin(target: str) -> object:
    """The plugin object of one of `BUILTIN_PLUGINS`' targets: its module, or a new instance of its class."""
    module, _, attr = target.partition(":")
    obj: object = importlib.import_module(module)
    return getattr(obj, attr)() if attr else obj


def load_entry_point(ep: metadata.EntryPoint) -> tuple[object, str]:
    """An installed plugin's object and its distribution's version; a plugin that fails to load is a PluginError."""
    try:
        obj = ep.load()
        if isinstance(obj, type):  # a class: each host gets its own instance (and its own state)
            obj = obj()
    except Exception as exc:  # a broken plugin must not look like a core bug
        raise PluginError(f"plugin '{ep.name}' ({ep.value}) failed to load: {exc}") from exc
    dist = getattr(ep, "dist", None)
    return obj, dist.version if dist else "?"

"""Where a config's relative paths point: one rule for every path of a run.

- A config written flat in JSON, as SimpleTuner writes its ``config.json`` (options at the top level,
  no ``train``/``data``/... tables), names its paths from the folder tuner is started in, as SimpleTuner
  reads them. The Wan guide keeps ``config/config.json`` and starts from the folder above, so its
  ``"output_dir": "output/wan"`` is ``./output/wan`` and ``"data_backend_config":
  "config/wan/multidatabackend.json"`` is ``./config/wan/multidatabackend.json``.
- Any other config (tuner's TOML, or JSON with section tables) names its paths from its own folder,
  so a run folder can be moved or started from anywhere.

The rule covers every path: each path option of every section (core and plugins), model sources that
are local paths, and the paths inside the backend file (dataset folders, caches). ``--set`` values
follow the rule of the file they override. Absolute paths and ``~`` are taken as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PathRule", "path_rule_for"]

CONFIG_FOLDER = "the config file's folder"
START_FOLDER = "the folder tuner was started in (a flat config.json is read as SimpleTuner reads it)"


@dataclass(frozen=True)
class PathRule:
    """The folder relative paths are read from, and why; ``other`` is the folder the other rule would use."""

    base: Path
    why: str = CONFIG_FOLDER
    other: Path | None = None

    def resolve(self, value: str | Path) -> Path:
        """``value`` as an absolute path under this rule."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base / path).resolve()

    def describe(self) -> str:
        return f"relative paths are read from {self.why}: {self.base}"

    def hint(self, value: str | Path, resolved: Path) -> str:
        """A clause for a missing ``resolved``: where relative paths are read from, and the file the other
        folder holds under that name (the usual cause: a config moved between the two layouts)."""
        if resolved.exists() or Path(value).expanduser().is_absolute():
            return ""
        found = ""
        if self.other is not None and (self.other / value).exists():
            found = f"; {(self.other / value).resolve()} exists: name it relative to {self.base}, or absolute"
        return f" ({self.describe()}{found})"


def is_flat_json(config_path: Path, raw: Mapping[str, Any], sections: Iterable[str]) -> bool:
    """Whether ``raw`` (read from ``config_path``) is a SimpleTuner-style config: JSON with no section table."""
    names = set(sections)
    return config_path.suffix.lower() == ".json" and not any(key in names for key in raw)


def path_rule_for(config_path: Path, raw: Mapping[str, Any], sections: Iterable[str]) -> PathRule:
    """The rule for a config file: its own folder, or the start folder for a flat ``config.json``."""
    folder, start = config_path.resolve().parent, Path.cwd().resolve()
    if is_flat_json(config_path, raw, sections):
        return PathRule(start, START_FOLDER, other=folder if folder != start else None)
    return PathRule(folder, CONFIG_FOLDER, other=start if folder != start else None)

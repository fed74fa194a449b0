"""Writing a tuner TOML config with comments: one writer for ``tuner configure`` and ``tuner config import``.

tomlkit (the one TOML writer tuner uses; ``tuner config show`` too) writes the comments: a header
of comment lines, then the top-level keys, then one table per section, each entry with an
optional comment line above it saying why it is there or how it maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ConfigDocument", "relative_path"]


def relative_path(path: Path, folder: Path) -> str:
    """``path`` as a file in ``folder`` writes it: relative when it can be, with forward slashes."""
    import os

    try:
        return Path(os.path.relpath(path, folder)).as_posix()
    except ValueError:  # another drive on Windows
        return str(path)


@dataclass
class _Entry:
    value: Any
    comment: str | None = None


@dataclass
class ConfigDocument:
    """A config being written: ``set("train.lora_rank", 16, "why")``, then `dumps` or `write`."""

    header: list[str] = field(default_factory=list)
    top: dict[str, _Entry] = field(default_factory=dict)
    sections: dict[str, dict[str, _Entry]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)

    def set(self, key: str, value: Any, comment: str | None = None) -> None:
        """Set ``section.key`` (or a top-level ``key``); ``None`` values are left out (TOML has no null)."""
        if value is None:
            return
        section, dot, name = key.partition(".")
        if not dot:
            self.top[key] = _Entry(value, comment)
        else:
            self.sections.setdefault(section, {})[name] = _Entry(value, comment)

    def get(self, key: str) -> Any:
        section, dot, name = key.partition(".")
        entry = self.sections.get(section, {}).get(name) if dot else self.top.get(key)
        return entry.value if entry else None

    def note(self, section: str, text: str) -> None:
        """A comment line at the end of ``section``'s table (``""``: of the top level)."""
        self.notes.setdefault(section, []).append(text)

    def dumps(self) -> str:
        import tomlkit

        doc = tomlkit.document()
        for line in self.header:
            doc.add(tomlkit.comment(line))
        if self.header:
            doc.add(tomlkit.nl())
        _fill(doc, self.top, self.notes.get("", []))
        for name, entries in self.sections.items():
            table = tomlkit.table()
            _fill(table, entries, self.notes.get(name, []))
            doc.add(name, table)
        for name in self.notes:
            if name and name not in self.sections:
                table = tomlkit.table()
                _fill(table, {}, self.notes[name])
                doc.add(name, table)
        return tomlkit.dumps(doc)

    def write(self, path: Path) -> Path:
        """Write the file (its folder is created) and return its path."""
        from tuner.durable import replacing

        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp:  # a full disk leaves the old file, never half a config
            tmp.write_text(self.dumps(), encoding="utf-8")
        return path


def _fill(container: Any, entries: dict[str, _Entry], notes: list[str]) -> None:
    import tomlkit

    for key, entry in entries.items():
        if entry.comment:
            for line in entry.comment.splitlines():
                container.add(tomlkit.comment(line))
        container.add(key, _inline(entry.value))
    for line in notes:
        container.add(tomlkit.comment(line))


def _inline(value: Any) -> Any:
    """Tables inside a section are written inline, so the entries after them stay in the section."""
    import tomlkit

    if isinstance(value, dict):
        table = tomlkit.inline_table()
        for key, item in value.items():
            if item is not None:
                table[key] = _inline(item)
        return table
    if isinstance(value, (list, tuple)):
        array = tomlkit.array()
        for item in value:
            array.append(_inline(item))
        return array
    if isinstance(value, Path):
        return str(value)
    return value

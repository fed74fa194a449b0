"""What a run folder holds besides its log: validation rounds, the files it wrote, its config.

Everything is read from the folder itself, never from the absolute paths in the
log (a run copied from another machine keeps its files but not their old
paths). A round is complete when its ``validation/.step-N.json`` record is
there (the trainer writes it last); a folder without one is still rendering
and shows the files written so far.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["validation_rounds", "written_files", "run_config", "flavour", "card_family"]

_ROUND = re.compile(r"step-(\d+)")
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
_MEDIA = (".mp4", ".webm", ".png", ".jpg", ".gif")
_EMA = "-ema"
_MAX_ROUNDS = 500  # a page of 500 rounds is already more than anyone scrolls


def _record(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(folder.with_name(f".{folder.name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("media"), dict) else None


def _listing(folder: Path) -> dict[str, Any]:
    """A round still rendering (or written by a version without records): the media files present."""
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(_MEDIA))
    except OSError:
        names = []
    sheet = next((n for n in names if n.startswith("contact-sheet")), None)
    return {"media": {Path(n).stem: n for n in names if n != sheet}, "contact_sheet": sheet, "previews": {}}


def _clips(media: dict[str, str], previews: dict[str, Any], base: str) -> list[dict[str, Any]]:
    """One entry per prompt: its trained clip and, beside it, its EMA clip and previews."""
    clips: dict[str, dict[str, Any]] = {}
    for key, name in media.items():
        if not isinstance(name, str):
            continue
        prompt, variant = (key[: -len(_EMA)], "ema") if key.endswith(_EMA) else (key, "trained")
        clip = clips.setdefault(prompt, {"key": prompt, "variants": {}, "previews": {}})
        clip["variants"][variant] = f"{base}/{name}"
        by_step = previews.get(key)
        if isinstance(by_step, dict):
            ordered = sorted(by_step.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 0)
            clip["previews"][variant] = [{"step": s, "url": f"{base}/{p}"} for s, p in ordered if isinstance(p, str)]
    return list(clips.values())


def validation_rounds(run_dir: Path, run_id: str) -> list[dict[str, Any]]:
    """The run's validation rounds, newest first, with file paths relative to the served folder."""
    try:
        folders = [Path(e.path) for e in os.scandir(run_dir / "validation") if e.is_dir() and _ROUND.fullmatch(e.name)]
    except OSError:
        return []
    folders.sort(key=lambda f: -int(f.name.split("-")[1]))
    rounds = []
    for folder in folders[:_MAX_ROUNDS]:
        record = _record(folder)
        done = record is not None
        record = record or _listing(folder)
        base = f"{run_id}/validation/{folder.name}" if run_id != "." else f"validation/{folder.name}"
        sheet = record.get("contact_sheet")
        rounds.append(
            {
                "step": int(folder.name.split("-")[1]),
                "complete": done,
                "clips": _clips(record["media"], record.get("previews") or {}, base),
                "contact_sheet": f"{base}/{sheet}" if isinstance(sheet, str) else None,
            }
        )
    return rounds


def _size(path: Path) -> int:
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
    except OSError:
        return 0


def written_files(run_dir: Path, run_id: str) -> list[dict[str, Any]]:
    """Adapters, the model card, checkpoints (intact when their manifest is there) and other top-level files."""
    prefix = "" if run_id == "." else f"{run_id}/"
    out = []
    try:
        entries = sorted(os.scandir(run_dir), key=lambda e: e.name)
    except OSError:
        return []
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith(".") or entry.name == "validation":
            continue
        if entry.is_dir():
            match = _CHECKPOINT.fullmatch(entry.name)
            if match:
                intact = (path / "manifest.json").is_file()
                out.append({"name": entry.name, "kind": "checkpoint", "size": _size(path), "intact": intact, "url": None})
            continue
        kind = "adapter" if entry.name.endswith(".safetensors") else "card" if entry.name == "README.md" else "file"
        out.append({"name": entry.name, "kind": kind, "size": _size(path), "url": prefix + entry.name})
    out.sort(key=lambda f: (f["kind"] == "checkpoint", int(f["name"].split("-")[1]) if f["kind"] == "checkpoint" else 0))
    return out


def _card_settings(run_dir: Path) -> dict[str, Any] | None:
    """The ``| `section.key` | value |`` rows of the model card a run wrote (runs that predate the config record)."""
    try:
        text = (run_dir / "README.md").read_text(encoding="utf-8", errors="replace")[:200_000]
    except OSError:
        return None
    settings: dict[str, Any] = {}
    for match in re.finditer(r"^\| `([\w.]+)` \| (.*) \|$", text, flags=re.MULTILINE):
        section, _, key = match.group(1).rpartition(".")
        settings.setdefault(section or "run", {})[key] = match.group(2)
    return settings or None


def run_config(run_dir: Path, start: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    """The resolved config and where it came from: the log's start record, else the model card's table."""
    if start and isinstance(start.get("config"), dict):
        return start["config"], "train_log.jsonl (start record)"
    card = _card_settings(run_dir)
    if card:
        return card, "README.md (the model card's settings table)"
    return None, ""


def flavour(config: dict[str, Any] | None, family: str | None) -> str | None:
    """The family's variant: the option named ``*flavour`` in the family's own section, whatever the family."""
    section = (config or {}).get(family or "")
    if isinstance(section, dict):
        for key, value in section.items():
            if key.endswith("flavour") and value:
                return str(value)
    return None


def card_family(run_dir: Path) -> str | None:
    """The family the model card names (runs that predate the family on the start record)."""
    try:
        head = (run_dir / "README.md").read_text(encoding="utf-8", errors="replace")[:4000]
    except OSError:
        return None
    match = re.search(r"\(model family `([\w-]+)`\)", head)
    return match.group(1) if match else None

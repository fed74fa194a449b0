"""Moving unreadable files out of a dataset (``delete_problematic_images``), never deleting them.

A broken file is moved, with its caption file, to the same relative path under
``<instance_data_dir>/.tuner-quarantine/``, and a line is appended to
``.tuner-quarantine/quarantine.jsonl`` saying what moved where and why. The scan
skips hidden folders, so quarantined files are not seen again; move a repaired
file back to use it. A file reached through a symlinked folder that leads outside
the dataset folder is never moved.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from tuner.data.local import QUARANTINE_DIR

__all__ = ["quarantine_file"]


def _free(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
        n += 1
    return candidate


def _move(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)  # same file system: an atomic rename
    except OSError:
        shutil.move(str(src), str(dest))


def quarantine_file(root: Path, file: Path, reason: str) -> Path | None:
    """Move ``file`` (and its ``.txt`` caption) into ``root``'s quarantine folder; return where it went.

    A file whose folder lies outside ``root`` (reached through a symlinked folder)
    is left where it is, with a notice, and ``None`` is returned: the run never
    moves files it was not given.
    """
    if not file.parent.resolve().is_relative_to(root.resolve()):
        from tuner.report.progress import notice

        notice(
            f"{file} is not quarantined: its folder lies outside {root} (reached through a symlink), and files"
            " outside the dataset folder are never moved; it is skipped"
        )
        return None
    base = root / QUARANTINE_DIR
    dest = _free(base / file.relative_to(root))
    _move(file, dest)
    moved = [str(dest.relative_to(root))]
    caption = file.with_suffix(".txt")
    if caption.is_file():
        caption_dest = dest.with_suffix(".txt")
        _move(caption, caption_dest)
        moved.append(str(caption_dest.relative_to(root)))
    record = {
        "file": str(file.relative_to(root)),
        "moved_to": moved,
        "reason": reason,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with (base / "quarantine.jsonl").open("a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")
    return dest

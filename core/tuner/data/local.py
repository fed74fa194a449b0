"""Finding the media files of a local dataset folder."""

from __future__ import annotations

import os
from pathlib import Path

from tuner.data.probe import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

__all__ = ["MEDIA_EXTENSIONS", "QUARANTINE_DIR", "list_media"]

MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
QUARANTINE_DIR = ".tuner-quarantine"


def list_media(root: Path) -> list[Path]:
    """Every clip and image below ``root``, in a stable order.

    Hidden files and folders (names starting with '.') are skipped, which keeps
    the quarantine folder and editors' temporary files out of the dataset.
    """
    found: list[Path] = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in MEDIA_EXTENSIONS:
                found.append(Path(folder) / name)
    return sorted(found)

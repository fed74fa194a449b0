"""Finding the media files of a local dataset folder."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tuner.data.probe import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

__all__ = ["MEDIA_EXTENSIONS", "QUARANTINE_DIR", "MediaListing", "find_media", "list_media"]

MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
QUARANTINE_DIR = ".tuner-quarantine"


@dataclass
class MediaListing:
    """What `find_media` found: the files, the folders it could not read, the links it did not follow again."""

    files: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    repeated: list[tuple[Path, Path]] = field(default_factory=list)  # (link, the folder it leads back to)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows links: two names of one folder or file share it
    except OSError:
        return None
    return st.st_dev, st.st_ino


def find_media(root: Path) -> MediaListing:
    """Every clip and image below ``root``, in a stable order, each folder entered once.

    Hidden files and folders (names starting with '.') are skipped, which keeps
    the quarantine folder and editors' temporary files out of the dataset. Links are
    followed, but a folder reached a second time (a link back to a parent: a loop; or
    a second link to one folder) is not entered again, so each file of it counts once.
    """
    listing = MediaListing()

    def unreadable(exc: OSError) -> None:
        listing.unreadable.append((Path(exc.filename or root), f"unreadable folder: {exc.strerror or exc}"))

    seen_dirs = {_identity(str(root))}
    candidates: list[Path] = []
    for folder, dirs, files in os.walk(root, followlinks=True, onerror=unreadable):
        keep = []
        # Real folders before links to them: a folder is listed under its own name where it can be.
        visible = (d for d in dirs if not d.startswith("."))
        names = sorted(visible, key=lambda d: (os.path.islink(os.path.join(folder, d)), d))
        for name in names:
            path = os.path.join(folder, name)
            ident = _identity(path)
            if ident is None:
                listing.unreadable.append((Path(path), "unreadable folder: a link that leads nowhere"))
            elif ident in seen_dirs:
                listing.repeated.append((Path(path), Path(os.path.realpath(path))))
            else:
                seen_dirs.add(ident)
                keep.append(name)
        dirs[:] = keep
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in MEDIA_EXTENSIONS:
                candidates.append(Path(folder) / name)
    listing.files = sorted(candidates)
    return listing


def list_media(root: Path) -> list[Path]:
    """Every clip and image below ``root``, in a stable order (see `find_media`)."""
    return find_media(root).files

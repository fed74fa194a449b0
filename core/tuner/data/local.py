"""The ``local`` data backend: a dataset is a folder of media files, read in place."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from tuner.data.captions import read_caption_file
from tuner.data.probe import MediaInfo, file_digest, probe_media, stat_signature
from tuner.data.storage import MEDIA_EXTENSIONS, DataBackend, MediaListing
from tuner.errors import DataError

if TYPE_CHECKING:
    from tuner.data.layout import DatasetSpec

__all__ = ["LocalFiles", "check_folder", "find_media"]


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


def check_folder(spec: DatasetSpec) -> None:
    """Stop with one line when the dataset's ``instance_data_dir`` is no folder."""
    if not spec.root.is_dir():
        where = f"{spec.where}: instance_data_dir"
        raise DataError(f"{where} does not exist or is not a folder: {spec.root}{spec.root_hint}")


class LocalFiles(DataBackend):
    """``type: local``: every clip and image below ``instance_data_dir``, read in place.

    Files are remembered by their stat signature (`tuner.data.probe.stat_signature`),
    so a second start only stats them, and broken ones can be quarantined.
    """

    description = "a folder of clips and images (searched recursively), read in place"
    files_on_disk = True

    def list_files(self, spec: DatasetSpec) -> MediaListing:
        check_folder(spec)
        return find_media(spec.root)

    def open(self, path: Path) -> BinaryIO:
        return path.open("rb")

    def signature(self, path: Path) -> list[int] | None:
        return stat_signature(path.stat())

    def probe(self, path: Path) -> tuple[MediaInfo, str]:
        # By path: PyAV and Pillow read the file themselves (faster than through a Python file object).
        return probe_media(path), file_digest(path)

    def read_caption(self, path: Path) -> tuple[str | None, str | None]:
        return read_caption_file(path)

    def quarantine(self, spec: DatasetSpec, path: Path, reason: str) -> Path | None:
        from tuner.data.quarantine import quarantine_file

        return quarantine_file(spec.root, path, reason) if path.exists() else None

"""The data backend contract: where a dataset's files live and how the core reads them.

The backend file's ``type`` names a backend; plugins register backends with the
`tuner.hookspecs.register_data_backends` hook, and the core's own ``local``
(`tuner.data.local.LocalFiles`) and ``metadata`` (`tuner.data.metadata.MetadataFiles`)
come through the same hook. A backend only lists files and hands out their bytes:
the core captions, probes, hashes, sizes, caches and reports every file alike, so
a dataset cached from a backend is keyed by the same content digest as the same
files read from a folder.

Every file is named by a path under the dataset's ``root`` (its
``instance_data_dir``, resolved): a real file for ``local``, a member's name for a
backend that reads an archive or a remote store. Reports show that path, the
``filename`` caption strategy reads its name, and a metadata file's rows match the
path relative to ``root``. A backend that reads ``instance_data_dir`` as a name (a
hub id, a URL) finds it as written in ``spec.source``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from tuner.data.captions import MAX_CAPTION_BYTES, MetadataCaptions, clean_caption, decode_caption
from tuner.data.probe import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, MediaInfo, probe_stream, stream_digest

if TYPE_CHECKING:
    from tuner.data.layout import DatasetSpec

__all__ = ["MEDIA_EXTENSIONS", "DataBackend", "MediaListing"]

MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS


@dataclass
class MediaListing:
    """What a backend found in a dataset: the files, what it could not read, and notices for the report.

    ``unreadable``: ``(path, reason)`` per folder or entry that could not be listed (reported as skipped);
    ``repeated``: ``(link, the folder it leads back to)`` per folder reached twice (``local`` only);
    ``captions``: the metadata table the files were listed from (``metadata``), which then
    captions them too, so a scan reads and parses the table once.
    """

    files: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    repeated: list[tuple[Path, Path]] = field(default_factory=list)
    captions: MetadataCaptions | None = None


class DataBackend(ABC):
    """One kind of dataset storage: it lists a dataset's media files and opens them.

    Only `list_files` and `open` are required. The rest have defaults that work
    from `open`; the ``local`` backend overrides them to read files in place and
    remember them by their stat signature.
    """

    description: str = ""
    # True when every listed path is a file on this disk: decoders then open it by its name, as
    # PyAV and Pillow read fastest (the core's ``local`` and ``metadata``), not through `open`.
    files_on_disk: bool = False

    @abstractmethod
    def list_files(self, spec: DatasetSpec) -> MediaListing:
        """Every clip and image of the dataset, each a path under ``spec.root``, in a stable order.

        Raise `tuner.errors.DataError` (one line, naming ``spec.where``) when the dataset itself
        cannot be reached; list single entries that cannot be read in ``unreadable`` instead.
        The suffix of each path says what it is (`MEDIA_EXTENSIONS`).
        """

    @abstractmethod
    def open(self, path: Path) -> BinaryIO:
        """The bytes of a listed file (or of a caption file beside it), as a seekable binary file.

        Raise `OSError` (``FileNotFoundError`` for one that does not exist) when it cannot be read.
        The core closes it; decoder threads call this concurrently.
        """

    def signature(self, path: Path) -> list[int] | None:
        """Numbers that change whenever the file's bytes may have (size, times); raise `OSError` when it is gone.

        While they hold, the core reuses the file's probe and digest from the dataset's file
        index instead of reading it again. ``None`` (the default): every scan reads every file.
        """
        return None

    def probe(self, path: Path) -> tuple[MediaInfo, str]:
        """The file's picture size and frame count, and the SHA-256 of its bytes (the cache key's part).

        Raise `tuner.data.probe.ProbeError` for a file that is empty, broken or no media.
        """
        with self.open(path) as f:
            info = probe_stream(f, path.suffix)
            f.seek(0)
            return info, stream_digest(f)

    def read_caption(self, path: Path) -> tuple[str | None, str | None]:
        """``(caption, note)`` from the caption file ``path`` (``caption_strategy`` textfile).

        The caption is ``None`` when there is no such file; the note says how the text was
        read when it was not UTF-8, or why a file that exists gave no caption.
        """
        try:
            with self.open(path) as f:
                raw = f.read(MAX_CAPTION_BYTES + 1)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f"{path.name}: unreadable: {exc.strerror or exc}"
        if len(raw) > MAX_CAPTION_BYTES:
            return None, f"{path.name} is over {MAX_CAPTION_BYTES} bytes: not a caption"
        text, note = decode_caption(raw)
        return clean_caption(text), note

    def quarantine(self, spec: DatasetSpec, path: Path, reason: str) -> Path | None:
        """Set a broken file aside (``delete_problematic_images``); return where it went, or ``None``.

        The default moves nothing: the file is reported, and the file index remembers it as broken.
        """
        return None

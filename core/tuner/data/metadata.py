"""The ``metadata`` data backend: the files a metadata file lists, read in place.

The layout of a Hugging Face image or video folder: a folder of media and a
metadata file (JSON lines, a JSON list, CSV, or Parquet with pyarrow) whose
``filename_column`` names each file by its path relative to ``instance_data_dir``
and whose ``caption_column`` captions it. The file list comes from the rows, not
from a walk of the folder, so files the table does not name are not read at all,
and a row naming a file that is not there is reported. It takes the keys of
``caption_strategy: parquet`` (the ``parquet`` block), which a ``local`` dataset
uses to caption the files of a walk instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.data.captions import MetadataCaptions
from tuner.data.local import LocalFiles, check_folder
from tuner.data.storage import MEDIA_EXTENSIONS, MediaListing
from tuner.errors import DataError

if TYPE_CHECKING:
    from tuner.data.layout import DatasetSpec

__all__ = ["MetadataFiles"]


def _listed_file(named: Path, includes_extension: bool | None) -> Path | None:
    """The media file a row names (with its extension, or without when ``includes_extension`` allows)."""
    if includes_extension is not False and named.suffix.lower() in MEDIA_EXTENSIONS and named.is_file():
        return named
    if includes_extension is not True:
        for extension in sorted(MEDIA_EXTENSIONS):
            if (candidate := named.with_name(named.name + extension)).is_file():
                return candidate
    return None


class MetadataFiles(LocalFiles):
    """``type: metadata``: the files named by the rows of the ``parquet`` block's metadata file."""

    description = "the files a metadata file (JSONL, CSV, Parquet) lists under instance_data_dir, with their captions"

    def list_files(self, spec: DatasetSpec) -> MediaListing:
        if spec.caption_strategy != "parquet" or spec.metadata is None:
            raise DataError(
                f"{spec.where}: type 'metadata' lists the files a metadata file names: set caption_strategy"
                " 'parquet' and a 'parquet' block naming the file (path)"
            )
        check_folder(spec)
        table = MetadataCaptions.of(spec)
        listing = MediaListing(captions=table)
        for key in table.by_key:
            named = Path(os.path.normpath(spec.root / key))
            if not named.is_relative_to(spec.root):
                listing.unreadable.append((named, f"listed in {table.path.name}, but outside instance_data_dir"))
            elif (found := _listed_file(named, spec.metadata.identifier_includes_extension)) is None:
                listing.unreadable.append((named, f"listed in {table.path.name}, but no such media file"))
            else:
                listing.files.append(found)
        listing.files = sorted(set(listing.files))
        return listing

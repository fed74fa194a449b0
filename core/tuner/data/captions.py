"""Captions: caption files in any common encoding, file names, and JSONL/CSV metadata files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.errors import DataError
from tuner.jsonfile import loads, read_regular, regular_file_problem

if TYPE_CHECKING:
    from tuner.data.layout import DatasetSpec
    from tuner.data.storage import DataBackend

__all__ = [
    "decode_caption",
    "clean_caption",
    "read_caption_file",
    "caption_from_filename",
    "MetadataCaptions",
    "CaptionSource",
]


def decode_caption(raw: bytes) -> tuple[str, str | None]:
    """Text of a caption file and, when it was not UTF-8, a note saying how it was read.

    UTF-8 (with or without BOM) and UTF-16 with BOM are read as such. Anything else is
    read as Windows-1252, the usual encoding of captions written by older Windows tools;
    bytes undefined there fall back to Latin-1, which maps every byte, so nothing fails.
    """
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16"), None
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252"), "not UTF-8: read as Windows-1252"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "not UTF-8: read as Latin-1"


def clean_caption(text: str) -> str:
    # Line breaks and runs of spaces become single spaces: one caption per file.
    return " ".join(text.replace("\x00", " ").split())


# A caption is a sentence or a paragraph; a bigger "caption file" is something else.
MAX_CAPTION_BYTES = 1024 * 1024


def read_caption_file(path: Path) -> tuple[str | None, str | None]:
    """``(caption, note)``; the caption is ``None`` when the file is missing (or is no regular file: a FIFO never hangs)."""
    problem, raw = regular_file_problem(path, limit=MAX_CAPTION_BYTES)
    if raw is None:
        if problem.startswith("no such file"):
            return None, None
        return None, problem.replace(str(path), path.name)
    text, note = decode_caption(raw)
    return clean_caption(text), note


def caption_from_filename(path: Path) -> str:
    return clean_caption(path.stem.replace("_", " "))


class MetadataCaptions:
    """Captions from a metadata file: JSON lines, a JSON list, CSV, or Parquet (with pyarrow)."""

    def __init__(
        self,
        path: Path,
        filename_column: str,
        caption_column: str,
        fallback_column: str | None,
        includes_extension: bool | None,
    ) -> None:
        self.path = path
        self.includes_extension = includes_extension
        rows = self._rows(path)
        self.by_key: dict[str, tuple[str | None, str | None]] = {}
        for number, row in enumerate(rows, start=1):
            if not isinstance(row, dict):
                raise DataError(f"{path}: row {number} is not an object with named columns")
            if filename_column not in row:
                raise DataError(f"{path}: row {number} has no column '{filename_column}' (columns: {', '.join(map(str, row))})")
            name = row[filename_column]
            if not isinstance(name, (str, int)) or isinstance(name, bool):
                raise DataError(f"{path}: row {number}: '{filename_column}' is not a file name")
            key = str(name).replace("\\", "/").strip()
            captions = (row.get(caption_column), row.get(fallback_column) if fallback_column else None)
            if any(c is not None and not isinstance(c, (str, int, float)) for c in captions):
                raise DataError(f"{path}: row {number}: the caption is not text")
            self.by_key[key] = captions
        if rows and caption_column not in rows[0]:
            raise DataError(f"{path}: no caption column '{caption_column}' (columns: {', '.join(rows[0])})")

    @classmethod
    def of(cls, spec: DatasetSpec) -> MetadataCaptions:
        """The metadata file of a dataset's ``parquet`` block, read."""
        assert spec.metadata is not None and spec.metadata_path is not None
        m = spec.metadata
        return cls(
            spec.metadata_path,
            m.filename_column,
            m.caption_column,
            m.fallback_caption_column,
            m.identifier_includes_extension,
        )

    @staticmethod
    def _rows(path: Path) -> list[dict]:
        if not path.exists():
            raise DataError(f"caption metadata file not found: {path}")
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise DataError(
                    f"{path}: reading .parquet needs pyarrow (pip install pyarrow), or use JSONL/CSV"
                ) from None
            if not path.is_file():
                raise DataError(f"{path} is not a regular file (a pipe, a socket or a device is never read)")
            try:
                return pq.read_table(path).to_pylist()
            except Exception as exc:  # pyarrow's own errors for a damaged file
                raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        text, _ = decode_caption(read_regular(path, error=DataError))
        try:
            if suffix == ".csv":
                return list(csv.DictReader(io.StringIO(text)))
            stripped = text.lstrip()
            if stripped.startswith("["):
                rows = loads(stripped)
                if not isinstance(rows, list):
                    raise DataError(f"{path}: expected a JSON list of rows")
                return rows
            return [loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: invalid JSON at line {exc.lineno}: {exc.msg} (expected JSON lines or CSV)"
            ) from None
        except csv.Error as exc:
            raise DataError(f"{path}: not readable as CSV ({exc})") from None
        except RecursionError:
            raise DataError(f"{path}: nested too deeply to be caption rows") from None
        except ValueError as exc:  # a key twice in one row
            raise DataError(f"{path}: {exc}") from None

    def caption(self, path: Path, root: Path) -> str | None:
        rel = path.relative_to(root).as_posix()
        if self.includes_extension is True:
            keys = [rel, path.name]
        elif self.includes_extension is False:
            keys = [rel.rsplit(".", 1)[0], path.stem]
        else:
            keys = [rel, path.name, rel.rsplit(".", 1)[0], path.stem]
        for key in keys:
            if key in self.by_key:
                main, fallback = self.by_key[key]
                for value in (main, fallback):
                    if value is not None and clean_caption(str(value)):
                        return clean_caption(str(value))
                return ""
        return None


class CaptionSource:
    """The caption of each file of one dataset, under its ``caption_strategy``; caption files come from ``backend``.

    ``metadata``: the dataset's metadata table where its listing already read it (`MediaListing.captions`).
    """

    def __init__(self, spec: DatasetSpec, backend: DataBackend, metadata: MetadataCaptions | None = None) -> None:
        self.spec = spec
        self.backend = backend
        self.metadata = (metadata or MetadataCaptions.of(spec)) if spec.caption_strategy == "parquet" else None

    def caption(self, path: Path) -> tuple[str | None, str | None]:
        """``(caption, message)``: a caption (and maybe a note), or ``None`` and why the file is skipped."""
        strategy = self.spec.caption_strategy
        if strategy == "instanceprompt":
            return self.spec.instance_prompt or "", None
        if strategy == "filename":
            return caption_from_filename(path), None
        if strategy == "parquet":
            assert self.metadata is not None
            text = self.metadata.caption(path, self.spec.root)
            if text is None:
                return None, f"no row in {self.metadata.path.name}"
            if not text:
                return None, f"empty caption in {self.metadata.path.name}"
            return text, None
        caption_file = path.with_suffix(".txt")
        text, note = self.backend.read_caption(caption_file)
        if text is None:
            return None, note or f"no caption file {caption_file.name}"
        if not text:
            return None, f"empty caption file {caption_file.name}"
        return text, (f"{caption_file.name} {note}" if note else None)

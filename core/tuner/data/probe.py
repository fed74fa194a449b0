"""What each file is: size, frame count and content digest, remembered between runs.

Probing opens every file and hashing reads all its bytes, which is slow for a large
dataset. A `FileIndex` remembers both per file, keyed by the file's stat signature
(size, modification and change times, inode; the signature git uses to notice
edits), so a second start only stats the files. An edited file gets a new
signature and is probed and hashed again; cache keys use the digest, never the
signature.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from tuner.durable import replacing

if TYPE_CHECKING:
    from tuner.data.storage import DataBackend
    from tuner.data.timing import ClipTiming

__all__ = [
    "VIDEO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "MediaInfo",
    "ProbeError",
    "file_digest",
    "stream_digest",
    "probe_media",
    "probe_stream",
    "stat_signature",
    "FileIndex",
    "Probed",
    "probe_files",
    "error_text",
    "display_rotation",
]

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
_INDEX_VERSION = 3  # 2: a rotated clip's size is its upright size; 3: clips keep their frame timestamps


@dataclass(frozen=True)
class MediaInfo:
    """A file's upright picture size (after EXIF rotation or a clip's display matrix) and frame count (1 for images).

    ``timing``: a clip's frame timestamps (``None`` for images).
    """

    width: int
    height: int
    frames: int
    is_image: bool
    timing: ClipTiming | None = None

    def to_json(self) -> list[Any]:
        return [self.width, self.height, self.frames, self.is_image, self.timing and self.timing.to_json()]

    @classmethod
    def from_json(cls, data: list[Any]) -> MediaInfo:
        # Imported here, as below: timing needs numpy, which a plugin host registering the data backends must not load.
        from tuner.data.timing import ClipTiming

        timing = ClipTiming.from_json(data[4]) if len(data) > 4 and data[4] else None
        return cls(int(data[0]), int(data[1]), int(data[2]), bool(data[3]), timing)


class ProbeError(Exception):
    """The file cannot be used; the message says why."""


def stream_digest(f: BinaryIO, chunk: int = 1 << 20) -> str:
    """SHA-256 of an open file's bytes, from where it stands to its end."""
    h = hashlib.sha256()
    while block := f.read(chunk):
        h.update(block)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    with path.open("rb") as f:
        return stream_digest(f)


def error_text(exc: BaseException) -> str:
    """A library error as one short line (PyAV's messages end with the path, which the report shows anyway)."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).splitlines()[0]


def _probe_image(source: Path | BinaryIO) -> MediaInfo:
    from PIL import Image

    with Image.open(source) as img:
        img.verify()  # checks the structure (and a PNG's checksums) without decoding the pixels
    if not isinstance(source, Path):
        source.seek(0)
    with Image.open(source) as img:
        width, height = img.size
        # EXIF orientations 5-8 are rotated by 90 degrees: the picture is height x width.
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            width, height = height, width
    return MediaInfo(width, height, 1, True)


# FFmpeg's demuxers for single still images: such a file is a picture with a video name.
_STILL_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "gif_pipe", "qoi_pipe"}


def display_rotation(frame: Any) -> int:
    """Degrees (0, 90, 180, 270) a decoded frame turns counter-clockwise to stand upright.

    Phones store clips sideways and say so in the display matrix (side data): FFmpeg's players
    turn them, and so does tuner, as it applies an image's EXIF orientation.
    """
    # Counter-clockwise, in [-180, 180]; 0 without a display matrix (or with a PyAV too old to read it).
    rotation = getattr(frame, "rotation", 0) or 0
    return int(round(rotation / 90.0)) % 4 * 90


def _first_frame_rotation(container: Any, stream: Any) -> int:
    # The display matrix arrives with the decoded frames: the first one tells. A clip whose first
    # frame does not decode is reported by the decoder, where every broken frame is.
    try:
        first = next(container.decode(stream), None)
    except Exception:  # noqa: BLE001 - PyAV raises many types for broken files
        return 0
    return 0 if first is None else display_rotation(first)


def _probe_video(source: Path | BinaryIO) -> MediaInfo:
    import av

    from tuner.data.timing import read_timing

    with av.open(str(source) if isinstance(source, Path) else source) as container:
        if container.format.name in _STILL_FORMATS:
            codec = container.streams.video[0].codec_context.name if container.streams.video else ""
            kind = {"mjpeg": "JPEG", "": "still"}.get(codec, codec.upper())
            raise ProbeError(f"not a video: the file holds a {kind} image; give it its image extension (.png, .jpg)")
        if not container.streams.video:
            raise ProbeError("no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        timing = read_timing(container, stream)  # also the frame count: some containers (webm, mkv) store none
        frames = len(timing.pts)
        if 0 < frames < stream.frames:
            raise ProbeError(f"truncated: its header lists {stream.frames} frames, {frames} are in the file")
        if _first_frame_rotation(container, stream) in (90, 270):
            width, height = height, width
    if width <= 0 or height <= 0:
        raise ProbeError("the video stream has no picture size")
    if frames <= 0:
        raise ProbeError("no frames")
    return MediaInfo(width, height, frames, False, timing)


def probe_media(path: Path) -> MediaInfo:
    """Read a file's header; raise `ProbeError` when it is empty, unreadable or not media."""
    if not stat.S_ISREG(path.stat().st_mode):  # a FIFO or a device would be read forever
        raise ProbeError("not a regular file (a pipe, a socket or a device)")
    if path.stat().st_size == 0:
        raise ProbeError("empty file (0 bytes)")
    return _probe(path, path.suffix)


def probe_stream(f: BinaryIO, suffix: str) -> MediaInfo:
    """`probe_media` for an open file (a data backend's, `tuner.data.storage`); ``suffix`` says what it is."""
    if f.seek(0, os.SEEK_END) == 0:
        raise ProbeError("empty file (0 bytes)")
    f.seek(0)
    return _probe(f, suffix)


def _probe(source: Path | BinaryIO, suffix: str) -> MediaInfo:
    try:
        if suffix.lower() in IMAGE_EXTENSIONS:
            return _probe_image(source)
        return _probe_video(source)
    except ProbeError:
        raise
    except Exception as exc:  # PyAV and Pillow raise many types for broken files
        raise ProbeError(f"unreadable: {error_text(exc)}") from None


def _sound_record(record: dict[str, Any]) -> bool:
    """A record as `FileIndex.put` writes it: an error text, or a digest and a sensible picture size and length."""
    if "error" in record:
        return isinstance(record["error"], str) and bool(record["error"])
    digest, info = record.get("digest"), record.get("info")
    if not isinstance(digest, str) or len(digest) != 64 or not isinstance(info, list) or len(info) not in (4, 5):
        return False
    sizes, still = info[:3], info[3]
    if not isinstance(still, bool) or not all(type(n) is int and 0 < n < 1 << 20 for n in sizes):
        return False
    timing = info[4] if len(info) == 5 else None
    if timing:
        # Bounded before it is expanded: a count of 10**12 would fill the memory.
        count = timing.get("count") if isinstance(timing, dict) else None
        pts = timing.get("pts") if isinstance(timing, dict) else None
        if not (type(count) is int and 0 < count < 1 << 20) and not (isinstance(pts, list) and len(pts) < 1 << 20):
            return False
        try:
            MediaInfo.from_json(info)
        except (KeyError, TypeError, ValueError, IndexError, OverflowError):
            return False
    return True


def stat_signature(st: os.stat_result) -> list[int]:
    """A local file's signature in the file index: size, modification and change times, inode."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class FileIndex:
    """Digest and probe results per file, valid while the file's signature is unchanged.

    The signature is what the dataset's backend gives (`tuner.data.storage.DataBackend.signature`;
    for a local file, `stat_signature`); a file without one is never remembered.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        self.dirty = False
        try:
            data = json.loads(path.read_text())
            if data.get("version") == _INDEX_VERSION and isinstance(data["files"], dict):
                self.records = data["files"]
        except (OSError, ValueError, KeyError, AttributeError, RecursionError):
            pass  # missing or damaged: everything is probed again

    def get(self, file: Path, sig: list[int] | None) -> dict[str, Any] | None:
        """The record of ``file`` while its signature holds; a damaged record counts as none (probed again)."""
        record = self.records.get(str(file))
        if sig is None or not isinstance(record, dict) or record.get("sig") != sig:
            return None
        return record if _sound_record(record) else None

    def put(self, file: Path, sig: list[int] | None, **record: Any) -> None:
        if sig is not None:
            self.records[str(file)] = {"sig": sig, **record}
            self.dirty = True

    def mark_broken(self, file: Path, sig: list[int] | None, reason: str) -> None:
        """Remember a failure found later (while decoding), so the next scan skips the file at once."""
        self.put(file, sig, error=reason)

    def save(self) -> None:
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(self.path) as tmp:
            tmp.write_text(json.dumps({"version": _INDEX_VERSION, "files": self.records}))
        self.dirty = False


@dataclass(frozen=True)
class Probed:
    """One file after probing: its info and digest, or why it cannot be used."""

    path: Path
    info: MediaInfo | None
    digest: str | None
    error: str | None


def _probe_one(backend: DataBackend, path: Path) -> tuple[MediaInfo | None, str | None, str | None]:
    try:
        info, digest = backend.probe(path)
        return info, digest, None
    except ProbeError as exc:
        return None, None, str(exc)
    except OSError as exc:
        return None, None, f"unreadable: {exc.strerror or exc}"


def probe_files(
    backend: DataBackend,
    files: Iterable[Path],
    index: FileIndex,
    workers: int,
    on_done: Callable[[int], None] | None = None,
) -> list[Probed]:
    """Probe and hash ``files`` of ``backend`` (in parallel), reusing what ``index`` remembers."""
    files = list(files)
    results: dict[Path, Probed] = {}
    todo: list[tuple[Path, list[int] | None]] = []
    for path in files:
        try:
            sig = backend.signature(path)
        except OSError as exc:
            dangling = path.is_symlink() and isinstance(exc, FileNotFoundError)
            why = "a symbolic link that leads nowhere" if dangling else f"unreadable: {exc.strerror or exc}"
            results[path] = Probed(path, None, None, why)
            continue
        record = index.get(path, sig)
        if record is None:
            todo.append((path, sig))
        elif record.get("error"):
            results[path] = Probed(path, None, None, record["error"])
        else:
            results[path] = Probed(path, MediaInfo.from_json(record["info"]), record["digest"], None)
    if todo:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            probed = pool.map(partial(_probe_one, backend), [p for p, _ in todo])
            for (path, sig), (info, digest, error) in zip(todo, probed, strict=True):
                if error is not None:
                    index.put(path, sig, error=error)
                else:
                    assert info is not None
                    index.put(path, sig, digest=digest, info=info.to_json())
                results[path] = Probed(path, info, digest, error)
                if on_done:
                    on_done(1)
    return [results[p] for p in files]

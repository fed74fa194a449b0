"""Decoding files into training pixels: PyAV for clips, Pillow for images.

Resizing happens inside the decoder (libswscale through PyAV's ``reformat``), in
C and without the GIL, so several decoder threads run truly in parallel with the
encoder. Every picture comes out upright: an image's EXIF orientation and a clip's
display matrix (the side data phones write instead of turning the pixels) are applied.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from tuner.data.probe import IMAGE_EXTENSIONS, display_rotation, error_text, stream_digest
from tuner.errors import DataError

if TYPE_CHECKING:
    import torch

    from tuner.data.sizing import Geometry
    from tuner.data.storage import DataBackend

__all__ = ["SourceChanged", "Opener", "decode_sample", "opener_of", "to_pixels"]

Opener = Callable[[Path], BinaryIO]  # a data backend's ``open``


def opener_of(backend: DataBackend) -> Opener | None:
    """How `decode_sample` opens a dataset's files: by path (``None``) where they are on this disk, else the backend's ``open``."""
    return None if backend.files_on_disk else backend.open


def _wanted(geometry: Geometry) -> tuple[dict[int, list[int]], bool]:
    """Output positions of each frame to take (keyed by pts, or by position), and whether keys are pts."""
    wanted: dict[int, list[int]] = {}
    for slot, key in enumerate(geometry.take or range(geometry.frames)):
        wanted.setdefault(key, []).append(slot)
    return wanted, bool(geometry.take) and not geometry.by_index


class SourceChanged(DataError):
    """The file's bytes are not those the scan hashed (replaced or edited since): not broken, just not these."""


_CHANGED = "changed since the scan (its cache key names the earlier bytes): skipped in this run; the next run reads it anew"


def _fstat(f: BinaryIO) -> os.stat_result | None:
    """The open file's status, or ``None`` for a data backend's file that is no file descriptor (an archive member)."""
    try:
        return os.fstat(f.fileno())
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        return None


def _identity(f: BinaryIO, before: os.stat_result | None, digest: str) -> tuple:
    """What says an open file holds the bytes already hashed to ``digest`` in this build.

    A file's device, inode, size and modification time; a data backend's file with no
    descriptor (an archive member read into memory) has only its size to show.
    """
    if before is not None:
        return digest, before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns
    size = f.seek(0, io.SEEK_END)
    f.seek(0)
    return digest, size


@contextmanager
def _checked(
    path: Path, digest: str | None, verified: dict | None = None, opener: Opener | None = None
) -> Iterator[BinaryIO | str]:
    """The file to decode, open; with ``digest``, only when its bytes hash to it, and unchanged while decoded.

    The bytes hashed and the bytes decoded are those of one open file, so a file
    replaced after the scan is never cached under the earlier file's key. With
    ``verified`` (one dict per cache build), a file already hashed in this build whose
    device, inode, size and modification time (a backend's file with no descriptor: its
    size) are unchanged is not hashed again: the windows of a long take cost what their
    frames cost, not one read of the file each.
    ``opener``: how the dataset's backend opens its files (default: a local file).
    """
    if digest is None and opener is None:
        yield str(path)
        return
    try:
        f = opener(path) if opener is not None else path.open("rb")
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror or exc}") from None
    with f:
        if digest is None:
            yield f
            return
        before = _fstat(f)
        identity = _identity(f, before, digest)
        if verified is None or verified.get(str(path)) != identity:
            if stream_digest(f) != digest:
                raise SourceChanged(_CHANGED)
            f.seek(0)
            if verified is not None:
                verified[str(path)] = identity
        yield f
        after = _fstat(f)
        if before and after and (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise SourceChanged(_CHANGED)  # written to while it was decoded


def _decode_video(path: Path | BinaryIO | str, geometry: Geometry) -> np.ndarray:
    import av

    rw, rh = geometry.resize
    left, top = geometry.crop
    out = np.empty((geometry.frames, geometry.height, geometry.width, 3), dtype=np.uint8)
    wanted, timed = _wanted(geometry)
    filled: set[int] = set()
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            first, last = min(wanted), max(wanted)
            # Seek to the key frame before the window: the cost is the window's, not the clip's length.
            # A container that seeks imprecisely is read again from its start below.
            starts: list[int | None] = [first] if timed and first > 0 else []
            for start in [*starts, None]:
                if start is not None:
                    container.seek(start, stream=stream, backward=True)
                elif starts:
                    container.seek(0)
                position = -1
                for frame in container.decode(stream):
                    position += 1
                    key = frame.pts if timed else position
                    if key is None or key > last:
                        if key is not None:
                            break
                        continue
                    if key not in wanted or key in filled:
                        continue
                    turn = display_rotation(frame) // 90  # quarter turns counter-clockwise to stand upright
                    # The geometry is upright: a sideways frame is resized to the turned size, then turned.
                    sw, sh = (rh, rw) if turn % 2 else (rw, rh)
                    if (frame.width, frame.height) == (sw, sh):
                        rgb = frame.to_ndarray(format="rgb24")
                    else:
                        rgb = frame.to_ndarray(width=sw, height=sh, format="rgb24", interpolation="BICUBIC")
                    if turn:
                        rgb = np.rot90(rgb, turn)
                    for slot in wanted[key]:
                        out[slot] = rgb[top : top + geometry.height, left : left + geometry.width]
                    filled.add(key)
                    if len(filled) == len(wanted):
                        break
                if len(filled) == len(wanted):
                    break
    except DataError:
        raise
    except Exception as exc:  # PyAV raises many types for broken files
        raise DataError(f"cannot decode: {error_text(exc)}") from None
    if len(filled) < len(wanted):
        got = sum(len(wanted[k]) for k in filled)
        raise DataError(f"truncated: decoded {got} of the {geometry.frames} frames needed")
    return out


def _decode_image(path: Path | BinaryIO | str, geometry: Geometry) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            if img.size != geometry.resize:
                img = img.resize(geometry.resize, Image.Resampling.BICUBIC, reducing_gap=3.0)
            left, top = geometry.crop
            img = img.crop((left, top, left + geometry.width, top + geometry.height))
            return np.array(img, dtype=np.uint8)[None]  # writable, as torch.from_numpy wants
    except Exception as exc:  # truncated or corrupt files surface only when the pixels are read
        raise DataError(f"cannot decode: {error_text(exc)}") from None


def decode_sample(
    path: Path,
    geometry: Geometry,
    digest: str | None = None,
    verified: dict | None = None,
    opener: Opener | None = None,
) -> np.ndarray:
    """The sample's pixels, ``(frames, height, width, 3)`` uint8; raises `DataError` for a broken file.

    :param digest: the SHA-256 the scan found: bytes that differ raise `SourceChanged` (nothing is decoded).
    :param verified: files already hashed in this build (see `_checked`); shared by its windows.
    :param opener: the dataset backend's ``open`` (`tuner.data.storage.DataBackend.open`); unset: a local file.
    """
    decode = _decode_image if path.suffix.lower() in IMAGE_EXTENSIONS else _decode_video
    with _checked(path, digest, verified, opener) as source:
        return decode(source, geometry)


def to_pixels(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``(..., H, W, 3)`` -> float ``(..., 3, H, W)`` in ``[-1, 1]``, as `encode_batch` expects."""
    import torch

    video = torch.as_tensor(frames)
    video = video.movedim(-1, -3).float()
    return video.div_(127.5).sub_(1.0)

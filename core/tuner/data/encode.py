"""Filling the caches: decode and encode whatever is not cached yet.

Three stages run at once: decoder threads (PyAV and Pillow release the GIL) read
and resize clips ahead of the encoder, the encoder works through same-shape
batches of ``vae_batch_size``, and a writer thread stores finished entries.
Each entry is written atomically as soon as it is encoded, so an interrupted
build keeps its finished entries and the next run encodes only the rest.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.cache.store import write_entry
from tuner.data.frames import Opener, SourceChanged, decode_sample, to_pixels
from tuner.errors import DataError
from tuner.progress import task_progress

if TYPE_CHECKING:
    import torch

    from tuner.data.sizing import Geometry
    from tuner.plugins import PluginHost
    from tuner.types.bundle import ModelBundle
    from tuner.types.training import ClipFeatures

__all__ = ["LatentJob", "EntryWriter", "build_latents", "build_texts"]


@dataclass(frozen=True)
class LatentJob:
    """One clip to encode: where it is, how to cut it, where its entries go.

    ``latents`` is false when only some features' entries are missing;
    ``features`` pairs the index of each missing feature with its entry.
    """

    source: Path
    geometry: Geometry
    entry: Path
    latents: bool = True
    features: tuple[tuple[int, Path], ...] = ()
    digest: str = ""  # the source's SHA-256 the entry is keyed by: decoding checks the bytes it reads against it
    opener: Opener | None = None  # how the dataset's backend opens the source (unset: a local file)


class EntryWriter:
    """A background thread that writes entries; at most ``depth`` wait in memory."""

    def __init__(self, depth: int, compress: bool) -> None:
        self.compress = compress
        self.queue: queue.Queue[tuple[Path, dict[str, Any], dict[str, str] | None] | None] = queue.Queue(max(1, depth))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="tuner-cache-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    write_entry(item[0], item[1], item[2], compress=self.compress)
                except BaseException as exc:  # noqa: BLE001 - surfaced in the caller's thread
                    self.error = exc

    def put(self, path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((path, tensors, metadata))

    def close(self) -> None:
        """Write what is queued, then stop (also after an interruption: finished work is kept)."""
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def __enter__(self) -> EntryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pipeline(
    decode: Callable[[LatentJob], Any], jobs: Sequence[LatentJob], workers: int, lookahead: int
) -> Generator[tuple[LatentJob, Any], None, None]:
    """``(job, decoded or the DataError)`` in job order, decoding at most ``lookahead`` jobs ahead."""
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="tuner-decode") as pool:
        pending: deque[tuple[LatentJob, Future]] = deque()
        it = iter(jobs)
        try:
            for job in it:
                pending.append((job, pool.submit(decode, job)))
                if len(pending) >= lookahead:
                    break
            while pending:
                job, future = pending.popleft()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(decode, nxt)))
                try:
                    result = future.result()
                except DataError as exc:
                    result = exc
                yield job, result
        finally:
            for _, future in pending:
                future.cancel()


def build_latents(
    host: PluginHost,
    bundle: ModelBundle,
    jobs: Sequence[LatentJob],
    *,
    vae_batch_size: int,
    write_batch_size: int,
    workers: int,
    compress: bool,
    device: torch.device,
    on_failure: Callable[[LatentJob, str], None],
    features: Sequence[ClipFeatures] = (),
) -> int:
    """Encode ``jobs`` into their entries; failed files go to ``on_failure(job, reason, broken)``. Returns clips encoded.

    ``broken`` is false for a file whose bytes changed since the scan (its entry's key names the old bytes).

    The family's `encode_batch` runs on the clips that lack latents, each of
    ``features`` on the clips that lack its entry: one decode serves them all.
    """
    import torch

    # Same-shape batches: order the work by shape so batches fill up.
    jobs = sorted(jobs, key=lambda j: (j.geometry.shape, str(j.source)))
    verified: dict = {}  # each file hashed once per build, however many windows it gives

    def decode(job: LatentJob) -> torch.Tensor:
        # uint8 (4x fewer bytes to move). No torch maths here: a torch op in this thread starts a
        # second OpenMP team that competes with the encoder's for the cores.
        pixels = decode_sample(job.source, job.geometry, digest=job.digest or None, verified=verified, opener=job.opener)
        return torch.from_numpy(pixels)

    written = 0
    batch: list[tuple[LatentJob, Any]] = []
    lookahead = max(2 * workers, vae_batch_size + workers)
    with (
        task_progress("encoding clips", len(jobs), unit="clips") as advance,
        EntryWriter(write_batch_size, compress) as writer,
    ):

        def flush() -> None:
            nonlocal written
            if not batch:
                return
            stacked = torch.stack([pixels for _, pixels in batch]).to(device, non_blocking=True)
            stacked = to_pixels(stacked)  # (B, F, H, W, 3) uint8 -> (B, F, 3, H, W) in [-1, 1]
            wanted = [(job.entry, i) for i, (job, _) in enumerate(batch) if job.latents]
            if wanted:
                _encode(("encode_batch", lambda pixels: host.encode_batch(bundle, pixels)), wanted, stacked, batch, writer)
            for k, feature in enumerate(features):
                rows = [(path, i) for i, (job, _) in enumerate(batch) for j, path in job.features if j == k]
                if rows:
                    _encode((f"{feature.name} features", feature.encode), rows, stacked, batch, writer)
            written += len(batch)
            advance(len(batch))
            batch.clear()

        decoded = _pipeline(decode, jobs, workers, lookahead)
        try:
            for job, pixels in decoded:
                if isinstance(pixels, DataError):
                    on_failure(job, str(pixels), not isinstance(pixels, SourceChanged))
                    advance(1)
                    continue
                if batch and batch[0][0].geometry.shape != job.geometry.shape:
                    flush()
                batch.append((job, pixels))
                if len(batch) == vae_batch_size:
                    flush()
            flush()
        finally:
            decoded.close()  # on an interruption too: stop the decoders now, not when the traceback is freed
    return written


def _encode(
    encoder: tuple[str, Callable[[torch.Tensor], list[dict[str, torch.Tensor]]]],
    rows: list[tuple[Path, int]],
    pixels: torch.Tensor,
    batch: list[tuple[LatentJob, Any]],
    writer: EntryWriter,
) -> None:
    """Run one encoder on the clips ``rows`` (entry, index in the batch) of ``pixels`` and queue their entries."""
    import torch

    name, encode = encoder
    picked = pixels if len(rows) == len(batch) else pixels[torch.tensor([i for _, i in rows], device=pixels.device)]
    with torch.no_grad():
        encoded = encode(picked)
    if len(encoded) != len(rows):
        raise DataError(f"{name} returned {len(encoded)} entries for {len(rows)} clips")
    for (path, i), tensors in zip(rows, encoded, strict=True):
        writer.put(path, tensors, {"source": str(batch[i][0].source)})


def build_texts(
    host: PluginHost,
    bundle: ModelBundle,
    todo: Sequence[tuple[str, Path]],
    *,
    text_batch_size: int,
    write_batch_size: int,
    compress: bool,
) -> int:
    """Encode captions ``(caption, entry)`` in batches of ``text_batch_size``. Returns entries written."""
    import torch

    with (
        task_progress("encoding captions", len(todo), unit="captions") as advance,
        EntryWriter(write_batch_size, compress) as writer,
    ):
        for start in range(0, len(todo), text_batch_size):
            chunk = todo[start : start + text_batch_size]
            with torch.no_grad():
                encoded = host.encode_prompts(bundle, [caption for caption, _ in chunk])
            if len(encoded) != len(chunk):
                raise DataError(f"encode_prompts returned {len(encoded)} entries for {len(chunk)} captions")
            for (_, entry), tensors in zip(chunk, encoded, strict=True):
                writer.put(entry, tensors)
            advance(len(chunk))
    return len(todo)

"""Which samples form each micro-batch, as a pure function of ``(seed, micro-batch index)``.

An epoch is planned from ``(seed, epoch)`` alone: each bucket's samples (each
repeated ``1 + repeats`` times) are shuffled and cut into batches of
``train_batch_size``, so a batch never mixes shapes or datasets; then the
datasets' batches are interleaved, the next batch coming from a dataset with
chance proportional to its ``probability`` among those with batches left. A
resumed run therefore continues mid-epoch exactly where the interrupted one
stopped, with nothing to save. Caption dropout is drawn per sample from
``(seed, index)`` too.

Threads: the next micro-batch is read ahead on a helper thread (when reading
takes long enough to be worth it, `READ_AHEAD_ABOVE_S`), which only reads (and
decompresses) files: it never calls a torch op, not even
``torch.stack``. The first torch op on a thread starts an OpenMP team of its
own; with threads >= cores the training thread's team then sleeps and wakes
between ops and a whole step ran 1.2x slower (DESIGN.md, "Rules learned from
measurement"). Tensors are made and stacked on the training thread, in
`TrainingData.load_micro_batch`; tests/core/test_data_threads.py keeps a guard on it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tuner.cache.store import entry_tensors, read_entry, read_entry_bytes
from tuner.errors import DataError

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig
    from tuner.data.buckets import Bucket, PlannedSample
    from tuner.data.report import DataReport

__all__ = ["epoch_batches", "epoch_length", "total_steps", "load_batch", "TrainingData", "READ_AHEAD_ABOVE_S"]

# Read the next batch ahead, on the helper thread, while reading one takes this long or longer.
# Below it the hand-off costs more than it hides: a cached tiny-model batch reads in ~0.1 ms, while
# waking the thread and sharing the GIL with it cost 0.1-1 ms a step (more on a busy machine).
READ_AHEAD_ABOVE_S = 0.001

# (samples, per sample [(bytes, entry path, source)] of its latent and feature entries, [(prompt bytes, entry path,
# source)]): read, not yet tensors
_RawBatch = tuple[list["PlannedSample"], list[list[tuple[bytes, Path, Path]]], list[tuple[bytes, Path, Path]]]


def epoch_length(buckets: Sequence[Bucket], batch_size: int, prune: bool) -> int:
    """Micro-batches per epoch: whole batches per bucket, plus a completed last one when not pruning."""
    return sum(b.size // batch_size if prune else -(-b.size // batch_size) for b in buckets)


def total_steps(config: RunConfig, micro_batches_per_epoch: int, processes: int = 1) -> int:
    """Optimizer steps the run takes, from max_train_steps, num_train_epochs and ignore_final_epochs.

    Each step trains ``gradient_accumulation_steps`` micro-batches on each of ``processes`` processes.
    """
    tc = config.train
    per_epoch = max(1, micro_batches_per_epoch // (tc.gradient_accumulation_steps * processes))
    by_epochs = tc.num_train_epochs * per_epoch
    if tc.max_train_steps == 0:
        return by_epochs
    if tc.num_train_epochs == 0 or tc.ignore_final_epochs:
        return tc.max_train_steps
    return min(tc.max_train_steps, by_epochs)


def _bucket_batches(bucket: Bucket, batch_size: int, prune: bool, rng: np.random.Generator) -> list[list[int]]:
    items = np.tile(np.asarray(bucket.members, dtype=np.int64), 1 + bucket.repeats)
    order = items[rng.permutation(len(items))]
    full, rest = divmod(len(order), batch_size)
    batches = [order[i * batch_size : (i + 1) * batch_size].tolist() for i in range(full)]
    if rest and not prune:
        # Keep every sample: complete the last batch with samples of the same bucket, drawn again.
        tail = order[full * batch_size :].tolist()
        while len(tail) < batch_size:
            tail += items[rng.permutation(len(items))][: batch_size - len(tail)].tolist()
        batches.append(tail)
    return batches


def epoch_batches(
    buckets: Sequence[Bucket], batch_size: int, seed: int, epoch: int, prune: bool = True
) -> list[list[int]]:
    """Every micro-batch of epoch ``epoch``, in order."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, epoch, 0xBA7C4])
    datasets: dict[str, list[list[int]]] = {}
    weights: dict[str, float] = {}
    for bucket in buckets:
        datasets.setdefault(bucket.dataset, []).extend(_bucket_batches(bucket, batch_size, prune, rng))
        weights[bucket.dataset] = bucket.probability
    names = list(datasets)
    for name in names:  # buckets of a dataset take turns at random
        batches = datasets[name]
        datasets[name] = [batches[i] for i in rng.permutation(len(batches))]
    if len(names) == 1:
        return datasets[names[0]]
    left = np.array([len(datasets[n]) for n in names])
    taken = np.zeros(len(names), dtype=np.int64)
    w = np.array([weights[n] for n in names], dtype=np.float64)
    out: list[list[int]] = []
    for u in rng.random(int(left.sum())):
        active = w * (taken < left)
        k = int(np.searchsorted(np.cumsum(active), u * active.sum(), side="right"))
        k = min(k, len(names) - 1)
        out.append(datasets[names[k]][taken[k]])
        taken[k] += 1
    return out


def _unreadable(path: Path, source: Path, exc: Exception) -> DataError:
    """A damaged file on disk: say which and how to recover. Running out of memory is not damage: it propagates."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch's is a RuntimeError
        raise exc
    return DataError(
        f"cache entry {path} (of {source}) cannot be read ({exc}): delete it and start again; it will be encoded anew"
    )


def _read(path: Path, source: Path) -> dict[str, torch.Tensor]:
    try:
        return read_entry(path)
    except Exception as exc:
        raise _unreadable(path, source, exc) from None


def _read_bytes(path: Path, source: Path) -> bytes:
    """The entry's bytes (file work only: the prefetch thread calls this)."""
    try:
        return read_entry_bytes(path)
    except Exception as exc:
        raise _unreadable(path, source, exc) from None


def _tensors(blob: bytes, path: Path, source: Path) -> dict[str, torch.Tensor]:
    try:
        return entry_tensors(blob)
    except Exception as exc:
        raise _unreadable(path, source, exc) from None


def _read_sample(sample: PlannedSample) -> dict[str, torch.Tensor]:
    """The latent entry of ``sample`` with its features' entries merged in."""
    entry = _read(sample.latents, sample.source)
    for path in sample.features:
        extra = _read(path, sample.source)
        if clash := sorted(set(extra) & set(entry)):
            raise DataError(f"cache entry {path} (of {sample.source}) repeats the keys {clash} of the latent entry")
        entry.update(extra)
    return entry


def _merged(entries: list[tuple[bytes, Path, Path]]) -> dict[str, torch.Tensor]:
    """`_read_sample` from bytes already read: the latent entry (first) with its features' entries merged in."""
    entry = _tensors(*entries[0])
    for blob, path, source in entries[1:]:
        extra = _tensors(blob, path, source)
        if clash := sorted(set(extra) & set(entry)):
            raise DataError(f"cache entry {path} (of {source}) repeats the keys {clash} of the latent entry")
        entry.update(extra)
    return entry


def _stack(latents: list[dict[str, torch.Tensor]], picked: Sequence[PlannedSample]) -> dict[str, torch.Tensor]:
    import torch

    try:
        return {k: torch.stack([entry[k] for entry in latents]) for k in latents[0]}
    except RuntimeError as exc:
        names = ", ".join(s.source.name for s in picked)
        raise DataError(f"samples of different shapes in one batch ({names}): {exc}") from None


def load_batch(
    samples: Sequence[PlannedSample], indices: Sequence[int]
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Stacked cached latents of ``samples[indices]`` (same shape) and their prompt encodings."""
    picked = [samples[i] for i in indices]
    return _stack([_read_sample(s) for s in picked], picked), [_read(s.text, s.source) for s in picked]


class TrainingData:
    """The cached training set as the loop sees it: ``epoch_length`` and one micro-batch per index.

    :ivar samples: every planned sample; batches hold indices into it.
    :ivar buckets: the buckets that train (after pruning).
    :ivar epoch_length: micro-batches per epoch.
    :ivar report: notices, skipped files, buckets and pruning of this run.
    """

    def __init__(
        self,
        samples: list[PlannedSample],
        buckets: list[Bucket],
        *,
        batch_size: int,
        seed: int,
        prune: bool,
        caption_dropout: float,
        empty_prompt: Path,
        report: DataReport,
        rebucket: Callable[[list[PlannedSample]], list[Bucket]] | None = None,
    ) -> None:
        self.samples = samples
        self.buckets = buckets
        self.batch_size = batch_size
        self.seed = seed
        self.prune = prune
        self.caption_dropout = caption_dropout
        self.empty_prompt = empty_prompt
        self.report = report
        self._rebucket = rebucket
        self.epoch_length = epoch_length(buckets, batch_size, prune)
        if self.epoch_length == 0:
            raise DataError("no batch can be formed from the data (every bucket was pruned)")
        self._epoch = lru_cache(maxsize=2)(self._plan)
        self._empty: bytes | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._next: tuple[int, Future] | None = None
        self._read_times: deque[float] = deque(maxlen=8)
        self._lock = threading.Lock()
        self._layout: dict[str, int] | None = None  # keys and ranks of the first entry loaded (_check_layout)

    def __len__(self) -> int:
        return len(self.samples)

    def only(self, samples: Sequence[PlannedSample]) -> TrainingData:
        """The same data restricted to ``samples`` (e.g. without held-out ones), bucketed and pruned again."""
        if self._rebucket is None:
            raise ValueError("this TrainingData cannot be bucketed again")
        kept = list(samples)
        if len(kept) == len(self.samples):
            return self
        return TrainingData(
            kept,
            self._rebucket(kept),
            batch_size=self.batch_size,
            seed=self.seed,
            prune=self.prune,
            caption_dropout=self.caption_dropout,
            empty_prompt=self.empty_prompt,
            report=self.report,
            rebucket=self._rebucket,
        )

    def _plan(self, epoch: int) -> list[list[int]]:
        return epoch_batches(self.buckets, self.batch_size, self.seed, epoch, self.prune)

    def batch_indices(self, index: int) -> list[int]:
        """Sample indices of micro-batch ``index`` (0-based, counted across epochs)."""
        epoch, within = divmod(index, self.epoch_length)
        with self._lock:
            return list(self._epoch(epoch)[within])

    def dropped_captions(self, index: int, count: int) -> list[bool]:
        """Which samples of micro-batch ``index`` train with the empty prompt."""
        if self.caption_dropout <= 0:
            return [False] * count
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.seed >> 32 & 0xFFFFFFFF, index, 0xD409])
        return (rng.random(count) < self.caption_dropout).tolist()

    def _read_files(self, index: int) -> _RawBatch:
        """The bytes of micro-batch ``index``'s entries. Runs on the prefetch thread: no torch op here."""
        indices = self.batch_indices(index)
        epoch = index // self.epoch_length
        picked = [self.samples[i].at(epoch) for i in indices]  # a random window is drawn per epoch
        # each sample: its latent entry, then its features' entries (merged on the training thread)
        latents = [[(_read_bytes(p, s.source), p, s.source) for p in (s.latents, *s.features)] for s in picked]
        prompts = []
        for s, dropped in zip(picked, self.dropped_captions(index, len(indices)), strict=True):
            if dropped:
                if self._empty is None:
                    self._empty = _read_bytes(self.empty_prompt, Path("(empty prompt)"))
                prompts.append((self._empty, self.empty_prompt, Path("(empty prompt)")))
            else:
                prompts.append((_read_bytes(s.text, s.source), s.text, s.source))
        return picked, latents, prompts

    def _to_tensors(self, raw: _RawBatch) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
        """Tensors from the bytes, latents stacked: on the training thread."""
        picked, latents, prompts = raw
        merged = [_merged(entries) for entries in latents]
        for entry, entries in zip(merged, latents, strict=True):
            self._check_layout(entry, entries[0][1], entries[0][2])
        return _stack(merged, picked), [_tensors(*entry) for entry in prompts]

    def _check_layout(self, entry: dict[str, torch.Tensor], path: Path, source: Path) -> None:
        """Every sample's entry holds the tensors the first one held, each with as many dimensions.

        A damaged entry that still parses (a key missing or renamed, a tensor of another rank) is
        named here, not met as a KeyError inside the model family's loss.
        """
        layout = {key: tensor.ndim for key, tensor in entry.items()}
        if self._layout is None:
            self._layout = layout
        elif layout != self._layout:
            raise DataError(
                f"cache entry {path} (of {source}) holds {sorted(layout.items())}, unlike the other entries"
                f" ({sorted(self._layout.items())}): it is damaged; delete it and start again; it will be encoded anew"
            )

    def _timed_read(self, index: int) -> tuple[_RawBatch, float]:
        start = time.perf_counter()
        raw = self._read_files(index)
        return raw, time.perf_counter() - start

    def load_micro_batch(
        self, index: int, following: int | None = None
    ) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
        """Stacked cached latents of micro-batch ``index`` and its per-sample prompt encodings.

        While reading a batch takes ``READ_AHEAD_ABOVE_S`` or longer (each of the last eight reads),
        the next index (``following``, by default ``index + 1``; one process of several skips the
        others' shares) has its files read in the background meanwhile (the loop asks for them in
        order). A quicker read is done here: handing it to the thread would cost more (a wake-up and
        GIL hand-offs every step). Either way the tensors are made here, on the calling (training) thread.
        """
        ahead = self._next
        self._next = None
        if ahead is not None and ahead[0] == index:
            raw, seconds = ahead[1].result()
        else:
            if ahead is not None:
                ahead[1].cancel()
            raw, seconds = self._timed_read(index)
        self._read_times.append(seconds)
        # The quickest of the last reads decides: one read slowed by a busy machine is no reason to hand off.
        if min(self._read_times) >= READ_AHEAD_ABOVE_S:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="tuner-batches")
            following = index + 1 if following is None else following
            self._next = (following, self._pool.submit(self._timed_read, following))
        return self._to_tensors(raw)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._next = None

"""From scanned files to buckets of same-shape samples.

Every sample gets its frame count and size from `tuner.data.sizing`, with the
model's strides; samples of one dataset and one shape form a bucket, and a batch
is always drawn from one bucket. Buckets too small for
``train_batch_size x gradient_accumulation_steps`` are pruned (unless
``disable_bucket_pruning``); a dataset left with nothing fails with the reasons
and the fixes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from functools import partial
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.cache.store import entry_key, entry_path
from tuner.data.batches import epoch_length
from tuner.data.sizing import Geometry, fit, frames_for, valid_frames
from tuner.data.windows import ClipClock, clock_summary, file_windows
from tuner.errors import DataError

if TYPE_CHECKING:
    from tuner.config import RunConfig
    from tuner.data.layout import DatasetSpec
    from tuner.data.report import DataReport
    from tuner.data.scan import DataScan, FileSample
    from tuner.types.bundle import ModelBundle

__all__ = [
    "PIXELS_VERSION",
    "PlannedSample",
    "with_epochs",
    "Bucket",
    "plan_samples",
    "make_buckets",
    "prune_buckets",
    "check_datasets",
]

# Part of every latent key: bump it when decoding or resizing changes, so old latents are not reused.
PIXELS_VERSION = 3  # 2: clips with a display matrix (phone clips) decode upright; 3: on the model's clock


@dataclass(frozen=True)
class PlannedSample:
    """A sample as it will train: its source, caption, geometry and cache entries.

    ``features`` are the entries of the features' per-clip tensors
    (`tuner.types.training.ClipFeatures`), in the order of the run's features.
    ``epochs``: for a ``random`` window, the sample as it trains in each epoch
    (its own window, geometry and entries; cycled past the last), filled by
    `with_epochs`; empty: the same window every epoch. ``redraw`` draws epoch
    ``e``'s window.
    """

    dataset: str
    source: Path
    caption: str
    geometry: Geometry
    latents: Path
    text: Path
    features: tuple[Path, ...] = ()
    digest: str = ""  # SHA-256 of the source's bytes at the scan: ``latents`` is keyed by it
    epochs: tuple[PlannedSample, ...] = ()
    redraw: Callable[[int], PlannedSample] | None = field(default=None, compare=False, repr=False)

    def at(self, epoch: int) -> PlannedSample:
        """The sample as it trains in ``epoch`` (itself, unless its window is drawn per epoch)."""
        return self.epochs[epoch % len(self.epochs)] if self.epochs else self

    def windows(self) -> tuple[PlannedSample, ...]:
        """Every window the sample trains, each once: what the cache must hold."""
        return self.epochs or (self,)


def with_epochs(samples: list[PlannedSample], epochs: int) -> list[PlannedSample]:
    """``samples`` with each ``random`` sample's window drawn for epochs ``0 .. epochs - 1``."""
    return [s if s.redraw is None else replace(s, epochs=tuple(s.redraw(e) for e in range(epochs))) for s in samples]


@dataclass
class Bucket:
    """Samples of one dataset that share a shape ``(frames, height, width)``."""

    dataset: str
    shape: tuple[int, int, int]
    members: list[int]
    repeats: int
    probability: float

    @property
    def label(self) -> str:
        f, h, w = self.shape
        return f"{w}x{h}@{f}"

    @property
    def size(self) -> int:
        """Samples per epoch, repeats included."""
        return len(self.members) * (1 + self.repeats)


def _frame_notices(scan: DataScan, bundle: ModelBundle, report: DataReport) -> None:
    t = bundle.temporal_compression
    for ds in scan.datasets:
        spec = ds.spec
        if spec.kind != "video":
            continue
        if (
            bundle.max_frames is not None
            and (spec.num_frames is None or spec.num_frames > bundle.max_frames)
            and any(not f.info.is_image for f in ds.files)
        ):
            report.notice(
                f"dataset '{spec.id}': model family '{bundle.family}' trains on at most {bundle.max_frames}"
                f" frame(s) per sample: clips give their first {bundle.max_frames}"
            )
            continue
        off = [n for n in spec.target_frames if valid_frames(n, t) != n]
        if off and bundle.max_frames is None:
            fits = ", ".join(f"{valid_frames(n, t)} or {valid_frames(n, t) + t}" for n in off)
            raise DataError(
                f"dataset '{spec.id}' video.target_frames {list(spec.target_frames)}: {', '.join(map(str, off))} do(es)"
                f" not fit the {bundle.family} VAE, which needs {t}k+1 frames: use {fits}"
            )
        if spec.num_frames is not None and valid_frames(spec.num_frames, t) != spec.num_frames:
            used = valid_frames(spec.num_frames, t)
            report.notice(
                f"{spec.frames_key} = {spec.num_frames} does not fit the {bundle.family} VAE, which needs {t}k+1"
                f" frames: training on {used} frames (set {used} or {used + t} to silence this)"
            )
        if spec.frame_interval and spec.bucket_strategy != "resolution_frames":
            report.notice(
                f"dataset '{spec.id}': frame_interval applies to bucket_strategy 'resolution_frames' only; ignored"
            )
        elif spec.frame_interval and spec.num_frames is None and t > 1:
            report.notice(
                f"dataset '{spec.id}': frame counts are rounded down to a multiple of frame_interval"
                f" {spec.frame_interval}, then to the {bundle.family} VAE's {t}k+1 (e.g. {2 * spec.frame_interval}"
                f" -> {valid_frames(2 * spec.frame_interval, t)})"
            )


def plan_samples(scan: DataScan, bundle: ModelBundle, config: RunConfig) -> list[PlannedSample]:
    """Geometry and cache entries of every usable file; files that do not fit are reported and left out."""
    report = scan.report
    _frame_notices(scan, bundle, report)
    rounding = config.data.aspect_bucket_rounding
    planned: list[PlannedSample] = []
    clocks: dict[str, list[tuple[FileSample, ClipClock, list[tuple[int, int]]]]] = {}
    for ds in scan.datasets:
        clocks[ds.spec.id] = []
        spec = ds.spec
        limit = bundle.max_frames
        # A model that takes at most `limit` frames: a clip needs only that many (an image family takes any clip).
        lengths = spec if limit is None else replace(
            spec,
            num_frames=spec.num_frames and min(spec.num_frames, limit),
            min_frames=min(spec.min_frames, limit),
            target_frames=tuple(sorted({min(n, limit) for n in spec.target_frames})),
            max_frames=min(spec.max_frames or limit, limit) if spec.frame_extraction == "full" else spec.max_frames,
        )
        for f in ds.files:
            for g in _file_geometries(lengths, f, bundle, rounding, config.train.seed, clocks[spec.id]):
                if isinstance(g, str):
                    report.skip(spec.id, f.path, g)
                    continue
                sample = _sample(spec, f, g, bundle)
                if spec.frame_extraction == "random":
                    sample = replace(sample, redraw=partial(_redraw, lengths, f, bundle, config.train.seed, g))
                planned.append(sample)
    _report_clocks(scan, clocks, report)
    return planned


def _file_geometries(
    spec: DatasetSpec,
    f: FileSample,
    bundle: ModelBundle,
    rounding: int,
    seed: int,
    clocks: list[tuple[FileSample, ClipClock, list[tuple[int, int]]]],
) -> list[Geometry | str]:
    """The geometry of each window the file trains (one for an image), or why it is skipped."""
    t = bundle.temporal_compression
    origin = int(f.digest[:15], 16)  # random crops and aspects: one per file, whatever the window
    if f.info.is_image or spec.kind == "image":
        frames = frames_for(spec, f.info, t)
        if isinstance(frames, str):
            return [frames]
        return [fit(spec, f.info, frames, bundle.spatial_multiple, rounding, origin)]
    planned = file_windows(
        spec, f.info, f.digest, model_fps=bundle.frame_rate, stride=t, seed=seed, limit=bundle.max_frames
    )
    if isinstance(planned, str):
        return [planned]
    clock, windows = planned
    clocks.append((f, clock, windows))
    out: list[Geometry | str] = []
    for start, length in windows:
        g = fit(spec, f.info, length, bundle.spatial_multiple, rounding, origin)
        out.append(g if isinstance(g, str) else replace(g, take=clock.take(start, length), by_index=clock.by_index))
    return out[:1] if isinstance(out[0], str) else out


def _sample(spec: DatasetSpec, f: FileSample, g: Geometry, bundle: ModelBundle) -> PlannedSample:
    key = entry_key(
        kind="latents",
        file=f.digest,
        encoder=bundle.cache_id,
        frames=g.frames,
        size=[g.width, g.height],
        resize=list(g.resize),
        crop=list(g.crop),
        take=list(g.take),
        by_index=g.by_index,
        pixels=PIXELS_VERSION,
    )
    text_key = entry_key(kind="text", caption=f.caption, encoder=bundle.cache_id)
    return PlannedSample(
        spec.id,
        f.path,
        f.caption,
        g,
        entry_path(spec.vae_cache, key),
        entry_path(spec.text_cache, text_key),
        digest=f.digest,  # decoding checks the bytes it reads against it (tuner.data.frames)
    )


def _redraw(
    spec: DatasetSpec, f: FileSample, bundle: ModelBundle, seed: int, first: Geometry, epoch: int
) -> PlannedSample:
    """The ``random`` sample of ``f`` with window length ``first.frames``, as drawn for ``epoch``."""
    drawn = file_windows(
        spec, f.info, f.digest, model_fps=bundle.frame_rate, stride=bundle.temporal_compression, seed=seed,
        epoch=epoch, limit=bundle.max_frames,
    )
    assert not isinstance(drawn, str)  # the same clip and settings as epoch 0's, which fitted
    clock, windows = drawn
    start, length = next(w for w in windows if w[1] == first.frames)
    return _sample(spec, f, replace(first, take=clock.take(start, length)), bundle)


def _report_clocks(
    scan: DataScan, clocks: dict[str, list[tuple[FileSample, ClipClock, list[tuple[int, int]]]]], report: DataReport
) -> None:
    """Per dataset: the rates found, what was done, and the windows taken (a notice where frames repeat)."""
    for ds in scan.datasets:
        found = clocks.get(ds.spec.id)
        if not found:
            continue
        lines = clock_summary(ds.spec.id, ds.spec.frame_extraction, [(c, w) for _, c, w in found])
        report.clips.extend(lines)
        if any(c.action == "repeated" for _, c, _ in found):
            report.notice(lines[0])


def make_buckets(samples: list[PlannedSample], scan: DataScan) -> list[Bucket]:
    """One bucket per (dataset, shape), in a stable order."""
    specs = {ds.spec.id: ds.spec for ds in scan.datasets}
    groups: dict[tuple[str, tuple[int, int, int]], list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[(s.dataset, s.geometry.shape)].append(i)
    order = {ds.spec.id: n for n, ds in enumerate(scan.datasets)}
    return [
        Bucket(dataset, shape, members, specs[dataset].repeats, specs[dataset].probability)
        for (dataset, shape), members in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1]))
    ]


def prune_buckets(buckets: list[Bucket], config: RunConfig, report: DataReport) -> list[Bucket]:
    """Drop buckets smaller than one optimizer step's samples, unless pruning is disabled; report both."""
    tc = config.train
    need = tc.train_batch_size * tc.gradient_accumulation_steps
    kept: list[Bucket] = []
    for b in buckets:
        if b.size >= need or config.data.disable_bucket_pruning:
            kept.append(b)
            if b.size < tc.train_batch_size:
                report.notice(
                    f"dataset '{b.dataset}' bucket {b.label} has {b.size} sample(s), fewer than train_batch_size"
                    f" {tc.train_batch_size}: its batches repeat its samples (disable_bucket_pruning is on)"
                )
        else:
            report.pruned.append(
                f"dataset '{b.dataset}' bucket {b.label}: {len(b.members)} sample(s) x (1 + repeats {b.repeats}) ="
                f" {b.size}, fewer than train_batch_size {tc.train_batch_size} x gradient_accumulation_steps"
                f" {tc.gradient_accumulation_steps} = {need}"
            )
    by_dataset: dict[str, list[Bucket]] = defaultdict(list)
    for b in kept:
        by_dataset[b.dataset].append(b)
    report.buckets = [
        f"dataset '{d}': {sum(b.size for b in bs)} samples per epoch in {len(bs)} bucket(s): "
        + ", ".join(f"{b.label} x{b.size}" for b in bs)
        for d, bs in by_dataset.items()
    ]
    if len(by_dataset) > 1:
        prune = not config.data.disable_bucket_pruning
        counts = {d: epoch_length(bs, tc.train_batch_size, prune) for d, bs in by_dataset.items()}
        report.buckets.append(
            "mix: a batch holds one dataset's samples; each next batch's dataset is drawn with chance proportional to"
            " its probability among those with batches left in the epoch: "
            + ", ".join(f"'{d}' probability {bs[0].probability:g} ({counts[d]} batches)" for d, bs in by_dataset.items())
        )
    return kept


def check_datasets(scan: DataScan, samples: list[PlannedSample], buckets: list[Bucket], config: RunConfig) -> None:
    """Fail for every enabled dataset that ends up with no samples, saying why and how to fix it."""
    tc = config.train
    need = tc.train_batch_size * tc.gradient_accumulation_steps
    kept = {b.dataset for b in buckets}
    held_out = config.section("evaluation").eval_dataset_id  # never trains, so it has no buckets
    for ds in scan.datasets:
        spec = ds.spec
        if spec.id in kept or spec.id == held_out:
            continue
        usable = [s for s in samples if s.dataset == spec.id]
        skipped = scan.report.reasons(spec.id)
        facts = [f"{ds.found} file(s) found"]
        if skipped:
            facts.append(f"skipped: {skipped}")
        fixes = []
        if usable:
            largest = max(
                sum(1 for s in usable if s.geometry.shape == shape) for shape in {s.geometry.shape for s in usable}
            )
            repeats = math.ceil(need / largest) - 1
            facts.append(
                f"{len(usable)} usable, but no bucket reaches train_batch_size {tc.train_batch_size} x"
                f" gradient_accumulation_steps {tc.gradient_accumulation_steps} = {need} (largest: {largest} x"
                f" (1 + repeats {spec.repeats}))"
            )
            fixes += [
                f"set repeats to {max(repeats, spec.repeats + 1)} or more",
                "lower train_batch_size or gradient_accumulation_steps",
                "set disable_bucket_pruning",
            ]
        if skipped and ("too short" in skipped or "too long" in skipped):
            fixes.append("relax video min_frames/max_frames or num_frames")
        if skipped and "too small" in skipped:
            fixes.append("lower minimum_image_size")
        if skipped and "no caption" in skipped:
            fixes.append("add the caption files or change caption_strategy")
        fixes = fixes or ["add usable clips or images"]
        raise DataError(
            f"no samples detected in dataset '{spec.id}' ({spec.root}): {'; '.join(facts)}. Fix: {'; '.join(fixes)}"
            f" (details in {scan.report_path})"
        )

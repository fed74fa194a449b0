"""``tuner data preview``: the exact frames that will be encoded, before any training or caching.

The datasets are scanned and planned as a run plans them (frame rate, windows,
crop and resize); then, for a few clips per dataset, every window is decoded by
the same decoder the cache uses and written as an mp4 at the training rate, with
a contact sheet per dataset whose rows give each window's frame times. A summary
per dataset says how many clips, windows and seconds of footage train, and the
frames per bucket.

The family's data facts (frame rate, frame rule, size multiple) come from its
`describe_family` profile, so no weights load; a family without one is loaded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tuner.config import RunConfig
    from tuner.data.buckets import PlannedSample
    from tuner.data.scan import DataScan
    from tuner.plugins import PluginHost
    from tuner.types.bundle import ModelBundle

__all__ = ["DatasetPreview", "data_facts", "write_preview"]

_SHEET_FRAMES = 8  # frames of a window shown in its contact-sheet row


@dataclass
class DatasetPreview:
    """What one dataset trains, and the files the preview wrote for it."""

    dataset: str
    clips: int = 0
    images: int = 0
    windows: int = 0
    seconds: float = 0.0
    buckets: Counter[str] = field(default_factory=Counter)
    files: list[Path] = field(default_factory=list)

    def line(self) -> str:
        parts = [f"{self.clips} clip(s)"] + ([f"{self.images} image(s)"] if self.images else [])
        parts.append(f"{self.windows} window(s)")
        if self.seconds:
            parts.append(f"{self.seconds:.1f} s of footage covered")
        frames = ", ".join(f"{label} x{n}" for label, n in sorted(self.buckets.items()))
        return f"dataset '{self.dataset}': {', '.join(parts)}; frames per bucket: {frames}"


def _setting(config: RunConfig, key: str) -> Any:
    section, _, name = key.partition(".")
    try:
        return getattr(config.section(section), name)
    except (KeyError, AttributeError):
        return None


def data_facts(host: PluginHost, config: RunConfig) -> ModelBundle:
    """What planning reads of a model (frame rate, frame rule, size multiple), from the family's profile.

    The flavour is the one whose settings the config holds (the family's default
    otherwise). A family without `describe_family` is loaded on the CPU instead.
    """
    import torch

    from tuner.errors import PluginError
    from tuner.types.bundle import ModelBundle

    family = config.model_family or ""
    try:
        profile = host.describe_family(family)
    except PluginError:
        return host.load_model(config, torch.device("cpu"))
    chosen = next(
        (f for f in profile.flavours if all(_setting(config, k) == v for k, v in f.settings.items())),
        profile.flavours[0],
    )
    return ModelBundle(
        family,
        torch.nn.Identity(),
        [],
        temporal_compression=profile.frame_step or 1,
        max_frames=None if profile.frame_step else 1,
        spatial_multiple=chosen.pixels_per_token,
        frame_rate=chosen.frame_rate,
        cache_id="preview",
    )


def _frame_times(sample: PlannedSample, scan: DataScan, fps: float | None) -> list[float]:
    """Seconds into the clip of each frame of ``sample``'s window (0 for an image)."""
    from tuner.data.windows import clip_clock

    if not sample.geometry.take:
        return [0.0] * sample.geometry.frames
    ds = next(d for d in scan.datasets if d.spec.id == sample.dataset)
    info = next(f.info for f in ds.files if f.path == sample.source)
    clock = clip_clock(ds.spec, info, fps)
    assert not isinstance(clock, str)  # it was planned from the same clock
    position = {key: i for i, key in enumerate(clock.keys)}
    return [float(clock.seconds[position[key]]) for key in sample.geometry.take]


def write_preview(host: PluginHost, config: RunConfig, out: Path, clips_per_dataset: int = 3) -> list[DatasetPreview]:
    """Plan the datasets, write the windows of ``clips_per_dataset`` clips per dataset under ``out``; the summary."""
    from tuner.data.buckets import plan_samples
    from tuner.data.frames import decode_sample, opener_of
    from tuner.data.prepare import scan_samples
    from tuner.errors import DataError
    from tuner.media import contact_sheet, safe_filename, thumbnails, write_media

    scan = scan_samples(config)
    bundle = data_facts(host, config)
    samples = plan_samples(scan, bundle, config)
    fps = bundle.frame_rate
    previews = {ds.spec.id: DatasetPreview(ds.spec.id) for ds in scan.datasets}
    for s in samples:
        p = previews[s.dataset]
        p.windows += 1
        p.buckets[s.geometry.label] += 1
    for ds in scan.datasets:
        p = previews[ds.spec.id]
        used = {s.source for s in samples if s.dataset == ds.spec.id}
        p.images = sum(1 for f in ds.files if f.info.is_image and f.path in used)
        p.clips = len(used) - p.images
        p.seconds = sum(
            len({t for s in samples if s.source == src for t in _frame_times(s, scan, fps)}) / fps
            for src in used
            if fps
        ) if fps else 0.0
        shown = sorted(used)[:clips_per_dataset]
        rows: list[tuple[str, list[np.ndarray]]] = []
        folder = out / safe_filename(ds.spec.id)
        for source in shown:
            windows = [s for s in samples if s.source == source and s.dataset == ds.spec.id]
            for k, s in enumerate(windows):
                try:
                    frames = decode_sample(s.source, s.geometry, opener=opener_of(ds.backend))
                except DataError as exc:
                    rows.append((f"{source.name}: {exc}", [np.zeros((1, 8, 8, 3), np.uint8)]))
                    continue
                stem = safe_filename(f"{source.stem}-w{k}-{s.geometry.label}")
                p.files.append(write_media(frames, folder, stem, int(round(fps or 16))))
                times = _frame_times(s, scan, fps)
                picks = np.unique(np.linspace(0, len(frames) - 1, min(_SHEET_FRAMES, len(frames))).round().astype(int))
                label = f"{source.name} window {k + 1}/{len(windows)} ({s.geometry.label}): frames at " + " ".join(
                    f"{times[i]:.2f}" for i in picks
                ) + " s"
                rows.append((label, [thumbnails(frames, count=_SHEET_FRAMES, max_side=160)]))
        if rows:
            p.files.append(contact_sheet(rows, folder / "contact_sheet.png"))
    scan.report.print_buckets()
    return list(previews.values())

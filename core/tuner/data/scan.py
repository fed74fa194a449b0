"""The scan: every dataset's files, captions and probe results, before any model loads.

Broken files (empty, unreadable, not media) and files without a caption are
skipped and listed at the end; with ``delete_problematic_images`` the broken ones
are moved to the dataset's quarantine folder. Nothing here depends on the model,
so a bad dataset path fails in a second, not after the weights load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.data.captions import CaptionSource
from tuner.data.layout import DataLayout, DatasetSpec, load_layout, safe_name
from tuner.data.probe import FileIndex, MediaInfo, probe_files
from tuner.data.report import DataReport
from tuner.data.storage import MEDIA_EXTENSIONS, DataBackend
from tuner.errors import DataError

if TYPE_CHECKING:
    from tuner.config import RunConfig
    from tuner.data.settings import DataSection

__all__ = ["FileSample", "DatasetScan", "DataScan", "scan_datasets", "decode_workers"]

_BAR_FROM = 64  # files to probe before a progress bar is worth showing


@dataclass(frozen=True)
class FileSample:
    """A readable, captioned file of a dataset."""

    dataset: str
    path: Path
    caption: str
    info: MediaInfo
    digest: str


@dataclass
class DatasetScan:
    spec: DatasetSpec
    files: list[FileSample]
    found: int
    index: FileIndex
    backend: DataBackend  # where the files are read from (the dataset's ``type``)

    def signature(self, path: Path) -> list[int] | None:
        """The file's signature in the index now, or ``None`` when it is gone."""
        try:
            return self.backend.signature(path)
        except OSError:
            return None


@dataclass
class DataScan:
    """What `scan_samples` returns: the layout, each dataset's usable files, the report so far."""

    layout: DataLayout
    datasets: list[DatasetScan]
    report: DataReport
    report_path: Path
    delete_problematic: bool

    def forget_broken(self, dataset: str, path: Path, reason: str) -> None:
        """A file found broken while decoding: remember it, and quarantine it when asked to."""
        scan = next(d for d in self.datasets if d.spec.id == dataset)
        scan.index.mark_broken(path, scan.signature(path), reason)
        scan.index.save()
        self.report.skip(dataset, path, reason, broken=True)
        if self.delete_problematic and (dest := scan.backend.quarantine(scan.spec, path, reason)):
            self.report.moved(path, dest)


def decode_workers(data: DataSection) -> int:
    """Decoder threads: as configured, else one per CPU core but one (the encoder's), at most 4."""
    if data.decode_workers:
        return data.decode_workers
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def _unknown(index: FileIndex, backend: DataBackend, file: Path) -> bool:
    """``file`` must be probed (a link leading nowhere or a vanished file counts too: the probe reports it)."""
    try:
        return index.get(file, backend.signature(file)) is None
    except OSError:
        return True


def _scan_dataset(
    spec: DatasetSpec, backend: DataBackend, report: DataReport, workers: int, delete_problematic: bool
) -> DatasetScan:
    from tuner.progress import task_progress

    listing = backend.list_files(spec)
    files = listing.files
    for folder, reason in listing.unreadable:
        report.skip(spec.id, folder, reason)  # listed as an unreadable file is; never quarantined
    for link, target in listing.repeated:
        report.notice(
            f"dataset '{spec.id}': {link} leads back to {target}, a folder already scanned (a link loop or a"
            " second link): not entered again, so its files count once"
        )
    if not files:
        unread = f"; {len(listing.unreadable)} folder(s) could not be read, e.g. {listing.unreadable[0][0]}: " + (
            listing.unreadable[0][1]
        ) if listing.unreadable else ""
        raise DataError(
            f"no clips or images found in {spec.root} (dataset '{spec.id}'; looked for"
            f" {', '.join(sorted(MEDIA_EXTENSIONS))}{unread})"
        )
    captions = CaptionSource(spec, backend, listing.captions)
    index = FileIndex(spec.vae_cache / f"files-{safe_name(spec.id)}.json")
    cold = sum(1 for f in files if _unknown(index, backend, f)) if len(files) >= _BAR_FROM else 0
    if cold >= _BAR_FROM:
        with task_progress(f"scanning '{spec.id}'", cold, unit="files") as advance:
            probed = probe_files(backend, files, index, workers, advance)
    else:
        probed = probe_files(backend, files, index, workers)
    usable: list[FileSample] = []
    for p in probed:
        if p.error is not None or p.info is None or p.digest is None:
            reason = p.error or "unreadable"
            report.skip(spec.id, p.path, reason, broken=True)
            if delete_problematic and (dest := backend.quarantine(spec, p.path, reason)):
                report.moved(p.path, dest)
            continue
        caption, message = captions.caption(p.path)
        if caption is None:
            rule = {
                "textfile": "add it, or set caption_strategy to 'filename' or 'instanceprompt'",
                "parquet": "add a row for it to the metadata file",
            }.get(spec.caption_strategy, "")
            report.skip(spec.id, p.path, f"no caption: {message}" + (f"; {rule}" if rule else ""))
            continue
        if message:
            report.caption_notes.append((p.path, message))
        usable.append(FileSample(spec.id, p.path, caption, p.info, p.digest))
    index.save()
    return DatasetScan(spec, usable, len(files), index, backend)


def scan_datasets(config: RunConfig) -> DataScan:
    """Read the layout and scan every dataset; fails only when a dataset has no files at all."""
    layout = load_layout(config)
    report = DataReport()
    for note in layout.notes:
        report.notice(note)
    data = config.data
    workers = decode_workers(data)
    scans = [
        _scan_dataset(spec, layout.backends[spec.type], report, workers, data.delete_problematic_images)
        for spec in layout.datasets
    ]
    report.print_new_skips("scan", data.delete_problematic_images)
    cache_root = Path(data.cache_dir) if Path(data.cache_dir).is_absolute() else config.base_dir / data.cache_dir
    report_path = cache_root / "data_report.json"
    report.write(report_path)
    return DataScan(layout, scans, report, report_path, data.delete_problematic_images)

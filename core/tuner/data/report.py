"""What the data pipeline tells the user: notices, skipped files, buckets.

Everything is kept on the `DataReport` (tests and tools read it there) and
printed once, on stderr, at the end of each phase. The full list of skipped
files is also written to ``<cache_dir>/data_report.json``.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tuner.durable import replacing

__all__ = ["Skip", "DataReport"]

_SHOWN = 10  # skipped files listed per dataset before "... and N more"


@dataclass(frozen=True)
class Skip:
    """A file that does not train, and why. ``broken`` files cannot be read at all."""

    dataset: str
    path: Path
    reason: str
    broken: bool


@dataclass
class DataReport:
    notices: list[str] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    quarantined: list[tuple[Path, Path]] = field(default_factory=list)
    buckets: list[str] = field(default_factory=list)
    clips: list[str] = field(default_factory=list)  # per video dataset: frame rates found, what was done, windows
    pruned: list[str] = field(default_factory=list)
    caption_notes: list[tuple[Path, str]] = field(default_factory=list)
    _printed: int = 0

    def notice(self, message: str) -> None:
        """A one-time message (a setting adjusted, an option with no effect): printed once."""
        if message not in self.notices:
            self.notices.append(message)
            from tuner.progress import notice

            notice(message)

    def skip(self, dataset: str, path: Path, reason: str, broken: bool = False) -> None:
        self.skipped.append(Skip(dataset, path, reason, broken))

    def skipped_in(self, dataset: str) -> list[Skip]:
        return [s for s in self.skipped if s.dataset == dataset]

    def reasons(self, dataset: str) -> str:
        """``"3 too short, 1 empty file"``: the skip reasons of a dataset, counted by kind."""
        kinds = Counter(s.reason.split(":")[0] for s in self.skipped_in(dataset))
        return ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())

    def print_new_skips(self, title: str, quarantining: bool = False) -> None:
        """List the files skipped since the last call, per dataset."""
        from tuner.progress import console, shown

        new = self.skipped[self._printed :]
        self._printed = len(self.skipped)
        notes = self.caption_notes
        con = console()
        if notes:
            example = notes[0]
            con.print(
                f"[yellow]notice:[/] {len(notes)} caption file(s) are not UTF-8 and were decoded as Windows-1252/"
                f"Latin-1 (e.g. {shown(example[0].name)}: {shown(example[1])})",
                highlight=False,
                soft_wrap=True,
            )
            self.caption_notes = []
        by_dataset: dict[str, list[Skip]] = defaultdict(list)
        for s in new:
            by_dataset[s.dataset].append(s)
        for dataset, skips in by_dataset.items():
            con.print(f"[yellow]{title}:[/] {len(skips)} file(s) of dataset '{shown(dataset)}' skipped", highlight=False)
            for s in skips[:_SHOWN]:
                con.print(f"  {shown(s.path)}: {shown(s.reason)}", highlight=False, soft_wrap=True)
            if len(skips) > _SHOWN:
                con.print(f"  ... and {len(skips) - _SHOWN} more (all listed in data_report.json)", highlight=False)
            broken = sum(s.broken for s in skips)
            if broken and not quarantining:
                con.print(
                    f"  {broken} of them cannot be read: delete_problematic_images = true moves such files to"
                    " the dataset's .tuner-quarantine folder",
                    highlight=False,
                )

    def moved(self, src: Path, dest: Path) -> None:
        from tuner.progress import console, shown

        self.quarantined.append((src, dest))
        console().print(f"[yellow]quarantined:[/] {shown(src)} -> {shown(dest)}", highlight=False, soft_wrap=True)

    def print_buckets(self) -> None:
        from tuner.progress import console, log_format, shown

        con = console()
        if log_format() == "auto":  # information only: quiet and json runs leave it out
            for line in self.clips + self.buckets:
                con.print(shown(line), highlight=False, soft_wrap=True)
        for line in self.pruned:
            con.print(f"[yellow]pruned:[/] {shown(line)}", highlight=False, soft_wrap=True)

    def write(self, path: Path) -> None:
        """The full report as JSON (atomically)."""
        data = {
            "notices": self.notices,
            "skipped": [{**asdict(s), "path": str(s.path)} for s in self.skipped],
            "quarantined": [{"file": str(a), "moved_to": str(b)} for a, b in self.quarantined],
            "clips": self.clips,
            "buckets": self.buckets,
            "pruned": self.pruned,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp:
            tmp.write_text(json.dumps(data, indent=1))

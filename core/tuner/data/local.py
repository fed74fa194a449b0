"""A local folder of clips (and images) with their captions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuner.errors import DataError

__all__ = ["VIDEO_EXTENSIONS", "IMAGE_EXTENSIONS", "Sample", "scan_folder", "read_caption"]

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})


@dataclass(frozen=True)
class Sample:
    """One training file and its caption."""

    path: Path
    caption: str

    @property
    def is_image(self) -> bool:
        return self.path.suffix.lower() in IMAGE_EXTENSIONS


def read_caption(path: Path, strategy: str, instance_prompt: str | None) -> str | None:
    """The caption of ``path`` under ``strategy``; ``None`` when its caption file is missing."""
    if strategy == "instanceprompt":
        return instance_prompt or ""
    if strategy == "filename":
        return path.stem.replace("_", " ").strip()
    caption_file = path.with_suffix(".txt")
    if not caption_file.is_file():
        return None
    raw = caption_file.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Old tools write captions in Windows-1252/Latin-1; every byte maps there.
        text = raw.decode("latin-1")
    return " ".join(text.split())


def scan_folder(folder: Path | None, strategy: str, instance_prompt: str | None = None) -> list[Sample]:
    """Every clip and image below ``folder`` with its caption, in a stable order."""
    if folder is None:
        raise DataError("data.instance_data_dir is not set: point it at a folder of clips with .txt captions")
    if not folder.is_dir():
        raise DataError(f"data.instance_data_dir does not exist or is not a folder: {folder}")
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS | IMAGE_EXTENSIONS and not p.name.startswith(".")
    )
    if not files:
        raise DataError(
            f"no clips or images found in {folder} (looked for {', '.join(sorted(VIDEO_EXTENSIONS | IMAGE_EXTENSIONS))})"
        )
    samples, missing = [], []
    for path in files:
        caption = read_caption(path, strategy, instance_prompt)
        if caption is None:
            missing.append(path)
        else:
            samples.append(Sample(path=path, caption=caption))
    if missing:
        example = missing[0]
        raise DataError(
            f"{len(missing)} file(s) in {folder} have no caption file (e.g. {example.name} needs "
            f"{example.with_suffix('.txt').name}); add them, or set data.caption_strategy to 'filename' "
            "or 'instanceprompt'"
        )
    return samples

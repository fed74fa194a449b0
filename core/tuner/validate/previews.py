"""Previews of intermediate sampler steps (``validation_preview``): which steps, their files, their sheet rows.

The family renders them (the denoised estimate at a step, decoded cheaply, in
`ValidationResult.preview_frames`); the core asks for them, writes them into
``validation/step-N/previews/`` and gives each clip a row of them on the
contact sheet, in step order, labelled with the steps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import PluginError
from tuner.media import thumbnails, write_media

if TYPE_CHECKING:
    import numpy as np

    from tuner.config import RunConfig
    from tuner.types.bundle import ModelBundle
    from tuner.types.validation import ValidationResult

__all__ = [
    "PREVIEW_FOLDER",
    "PREVIEW_THUMBNAILS",
    "PreviewReport",
    "request_steps",
    "notice_unsupported",
    "PreviewWriter",
    "keep_previews",
    "preview_row",
]

# (media key, sampler step, file): told of each preview file as soon as it is written.
PreviewReport = Callable[[str, int, Path], None]

PREVIEW_FOLDER = "previews"
# Frames of each preview shown on the sheet: a preview is a few frames at most, and one row holds every step.
PREVIEW_THUMBNAILS = 2


def request_steps(bundle: ModelBundle, config: RunConfig) -> tuple[int, ...]:
    """The sampler steps the family is asked to preview: none when previews are off or the family cannot."""
    return config.validation.preview_steps() if bundle.renders_previews else ()


def notice_unsupported(bundle: ModelBundle, config: RunConfig) -> None:
    """At start-up: ``validation_preview`` on a family that cannot render previews is ignored, and said so once."""
    if config.validation.validation_preview and not bundle.renders_previews:
        from tuner.progress import notice

        notice(f"validation_preview is ignored: the {bundle.family} family does not render sampler previews")


class PreviewWriter:
    """Writes one clip's previews as the family renders them (`ValidationRequest.on_preview`) and reports each.

    ``name`` is the clip's media key (``-ema`` included), ``stem`` its file stem. A preview the family
    hands over while sampling is written and reported at once, so a webhook sees it before the clip
    is finished; what it only returns at the end is written and reported by `keep_previews`.
    """

    def __init__(self, key: str, name: str, folder: Path, stem: str, fps: int, report: PreviewReport | None) -> None:
        self.key, self.name, self.folder, self.stem, self.fps, self.report = key, name, folder, stem, fps, report
        self.files: dict[int, Path] = {}

    def __call__(self, key: str, step: int, frames: Any) -> None:
        if key == self.key and step not in self.files:
            self.write(step, frames)

    def write(self, step: int, frames: Any) -> Path:
        import numpy as np

        self.files[step] = write_media(np.asarray(frames), self.folder / PREVIEW_FOLDER, f"{self.stem}-step-{step}", self.fps)
        if self.report is not None:
            self.report(self.name, step, self.files[step])
        return self.files[step]


def keep_previews(
    rendered: ValidationResult | None, steps: tuple[int, ...], writer: PreviewWriter, owner: str
) -> tuple[dict[int, Path], dict[int, np.ndarray]]:
    """The previews the family rendered for ``writer``'s clip: files (written now unless streamed) and frames by step.

    The family must return every requested step: a missing one is the plugin's error, not the user's.
    """
    if not steps:
        return {}, {}
    key = writer.key
    given: dict[int, Any] = (rendered.preview_frames.get(key, {}) if rendered is not None else {}) or {}
    missing = [s for s in steps if s not in given]
    if missing:
        raise PluginError(f"plugin '{owner}': validate returned no preview of step {missing[0]} for prompt '{key}'")
    import numpy as np

    frames = {step: np.asarray(given[step]) for step in steps}
    files = {step: writer.files.get(step) or writer.write(step, frames[step]) for step in steps}
    return files, frames


def preview_row(key: str, variant: str, frames: dict[int, np.ndarray]) -> tuple[str, list[np.ndarray]]:
    """A contact-sheet row: the previews of one clip left to right by step, the steps named in the label."""
    steps = sorted(frames)
    which = f", {variant}" if variant else ""
    label = f"{key}  previews{which} ({' | '.join(f'step {s}' for s in steps)})"
    return label, [thumbnails(frames[s], count=PREVIEW_THUMBNAILS) for s in steps]

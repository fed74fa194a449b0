"""Experiment trackers (TensorBoard, Weights & Biases) through accelerate's tracker classes.

A built-in lifecycle plugin with the ``[tracking]`` section. Per step it logs the
loss, learning rate, gradient norm, seconds per step, the evaluation loss when
there is one and whatever the family logs; per validation round the contact
sheet, (wandb) the videos and, with ``validation_preview``, the previews of each
clip under ``validation_preview/<clip>/step-NNN``. A tracker that fails is reported once and
dropped: reporting never stops training.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tuner.hookspecs import hookimpl
from tuner.report.secrets import Scrubber, run_scrubber

__all__ = ["TrackingSection", "Trackers", "TRACKERS", "tracker_values", "preview_tag", "gif_summary"]

log = logging.getLogger(__name__)

# name -> (modules that provide it, the pip package to install)
TRACKERS: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
}
# Step logs under the names trackers show.
_NAMES = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm", "step_time": "train/s_per_it",
          "eval_loss": "eval/loss"}


def _names(value: str | list[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    return [i.strip().lower() for i in items if i.strip()]


class TrackingSection(BaseModel):
    """Where the run's numbers and media are reported."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    report_to: str | list[str] = Field(
        "none",
        description="none, tensorboard, wandb, or several ('tensorboard,wandb' or a list). TensorBoard logs go to"
        " output_dir/logs; wandb honours WANDB_MODE=offline.",
    )
    tracker_project_name: str = Field("tuner", min_length=1, description="Project name in the trackers.")
    tracker_run_name: str | None = Field(
        None, description="Run name in the trackers; unset uses the output folder's name."
    )

    @field_validator("report_to")
    @classmethod
    def _known(cls, value: str | list[str], info: ValidationInfo) -> str | list[str]:
        names = _names(value)
        unknown = [n for n in names if n != "none" and n not in TRACKERS]
        if unknown:
            raise ValueError(f"unknown tracker '{unknown[0]}'; choose from none, {', '.join(TRACKERS)}")
        if "none" in names and len(names) > 1:
            raise ValueError("'none' cannot be combined with a tracker")
        if (info.context or {}).get("environment", True):
            for name in names:
                if name != "none" and _missing(name):
                    raise ValueError(_missing(name))
        return value

    @field_validator("tracker_project_name", "tracker_run_name")
    @classmethod
    def _one_name(cls, value: str | None) -> str | None:
        # TensorBoard makes folders of them under output_dir/logs: '../x' or '/x' would write elsewhere.
        if value is None:
            return value
        if value.strip() in ("", ".", "..") or any(c in value for c in "/\\") or not value.isprintable():
            raise ValueError("a name, not a path: no '/', '\\', control characters, and not '.' or '..'")
        if len(value.encode()) > 128:
            raise ValueError("at most 128 bytes")
        return value

    def trackers(self) -> list[str]:
        return [n for n in _names(self.report_to) if n != "none"]

    def missing_packages(self) -> list[str]:
        """A line per configured tracker whose package is not installed here."""
        return [line for name in self.trackers() if (line := _missing(name))]


def _missing(name: str) -> str:
    modules, package = TRACKERS[name]
    if any(importlib.util.find_spec(m) for m in modules):
        return ""
    return f"report_to = {name} needs the '{package}' package: pip install {package}"


def tracker_values(logs: dict[str, float]) -> dict[str, float]:
    """Step logs under tracker names (``train/loss``, ``eval/loss``, ...)."""
    return {_NAMES.get(k, f"train/{k}"): float(v) for k, v in logs.items()}


def gif_summary(tag: str, frames: Any, fps: float = 16.0) -> Any:
    """A TensorBoard image summary holding ``frames`` ``(F, H, W, 3)`` uint8 as an animated GIF."""
    import io

    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    pictures = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:], duration=round(1000 / fps), loop=0)
    height, width = frames.shape[1:3]
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=buffer.getvalue())
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def preview_tag(key: str, step: int) -> str:
    """Where a clip's preview at a sampler step is logged; the step zero-padded so the tags sort by step."""
    return f"validation_preview/{key}/step-{step:03d}"


def _flat_config(config: Any) -> dict[str, Any]:
    """``{"section.option": scalar}``: what trackers accept as hyper-parameters."""
    out: dict[str, Any] = {}
    for section, values in config.to_dict().items():
        if not isinstance(values, dict):
            out[section] = str(values)
            continue
        for key, value in values.items():
            out[f"{section}.{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


class Trackers:
    """Starts the configured trackers at run start and feeds them until the run ends."""

    def __init__(self) -> None:
        self.active: list[Any] = []
        self.scrub = Scrubber()

    @hookimpl
    def register_config_sections(self, register: Any) -> None:
        register("tracking", TrackingSection)

    @hookimpl
    def on_run_start(self, run: Any) -> None:
        from accelerate.tracking import TensorBoardTracker, WandBTracker

        section: TrackingSection = run.config.section("tracking")
        run_name = section.tracker_run_name or Path(run.output_dir).name
        self.active = []
        for name in section.trackers():
            if name == "tensorboard":
                tracker = TensorBoardTracker(f"{section.tracker_project_name}/{run_name}", run.output_dir / "logs")
            else:
                tracker = WandBTracker(section.tracker_project_name, name=run_name, dir=str(run.output_dir))
            self.active.append(tracker)
        self.scrub = run_scrubber(run.config)
        hparams = {k: self.scrub.value(v) for k, v in _flat_config(run.config).items()}
        self._each("start", lambda t: t.start())
        self._each("store the config", lambda t: t.store_init_configuration(hparams))

    def _each(self, action: str, call: Any) -> None:
        for tracker in list(self.active):
            try:
                call(tracker)
            except Exception as exc:  # a tracker must never stop training
                why = self.scrub(str(exc))
                log.warning("tracker %s failed to %s (%s); it is switched off for this run", tracker.name, action, why)
                self.active.remove(tracker)

    @hookimpl
    def on_step_end(self, run: Any, step: int, logs: dict[str, float]) -> None:
        values = tracker_values(logs)
        self._each("log", lambda t: t.log(values, step=step))

    @hookimpl
    def on_validation_done(self, run: Any, result: Any) -> None:
        if not self.active or result.contact_sheet is None:
            return
        import numpy as np
        from PIL import Image

        from tuner.media import read_media

        with Image.open(result.contact_sheet) as image:
            sheet = np.asarray(image.convert("RGB"))
        previews = {preview_tag(k, s): Path(p) for k, by_step in result.previews.items() for s, p in by_step.items()}

        def send(tracker: Any) -> None:
            if tracker.name == "tensorboard":
                images = {"validation/contact_sheet": sheet[None]}
                images.update({tag: read_media(path) for tag, path in previews.items()})
                stills = {k: Path(p) for k, p in result.media.items() if Path(p).suffix.lower() == ".png"}
                images.update({f"validation/{key}": read_media(path) for key, path in stills.items()})
                tracker.log_images(images, step=result.step, dataformats="NHWC")
                # Videos as animated GIFs, which TensorBoard's image panel plays (what add_video writes,
                # without the moviepy it needs): encoded by Pillow, written as an image summary.
                writer = tracker.writer._get_file_writer()
                for key, path in result.media.items():
                    if Path(path).suffix.lower() != ".png":
                        writer.add_summary(gif_summary(f"validation/{key}", read_media(Path(path))), result.step)
                return
            import wandb

            def wrap(path: Path) -> Any:
                return wandb.Video(str(path), format="mp4") if path.suffix == ".mp4" else wandb.Image(str(path))

            media: dict[str, Any] = {"validation/contact_sheet": wandb.Image(sheet)}
            media.update({f"validation/{key}": wrap(Path(path)) for key, path in result.media.items()})
            media.update({tag: wrap(path) for tag, path in previews.items()})
            tracker.log(media, step=result.step)

        self._each("log validation media", send)

    @hookimpl
    def on_run_end(self, run: Any, outputs: dict[str, Path], error: BaseException | None) -> None:
        self._each("finish", lambda t: t.finish())
        self.active = []

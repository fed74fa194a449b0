"""One validation round: every prompt at every size, written as media plus one contact sheet.

The family renders (its `validate` hook returns frames); the core decides what
is rendered, names and writes the files, and leaves training untouched.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.durable import replacing
from tuner.errors import ConfigError, PluginError
from tuner.media import contact_sheet, read_media, thumbnails, write_media
from tuner.outputs import claim
from tuner.types.validation import SkipLayerGuidance, ValidationRequest, ValidationResult
from tuner.validate.first_frames import first_windows, load_first_frames
from tuner.validate.inference import inference_state
from tuner.validate.previews import (
    PreviewReport,
    PreviewWriter,
    keep_previews,
    notice_unsupported,
    preview_row,
    request_steps,
)
from tuner.validate.prompts import CONTACT_SHEET_NAME, file_stems, round_prompts

if TYPE_CHECKING:
    import numpy as np

    from tuner.config import RunConfig
    from tuner.plugins import PluginHost
    from tuner.types.bundle import ModelBundle

__all__ = [
    "EmaSwap",
    "ROUND_RECORD",
    "validation_enabled",
    "check_validation",
    "run_validation",
    "round_variants",
    "round_complete",
]

# ``validation/.step-N.json``, written last beside the round's folder: the round finished.
ROUND_RECORD = ".{name}.json"
# A callable returning a context manager inside which the model carries its EMA weights.
EmaSwap = Callable[[], AbstractContextManager[object]]


def validation_enabled(host: PluginHost, config: RunConfig) -> bool:
    """Validation is on, there is a prompt to render and the family can render."""
    v = config.validation
    return not v.validation_disable and bool(round_prompts(v)) and host.implements(config.model_family, "validate")


def check_validation(host: PluginHost, bundle: ModelBundle, config: RunConfig) -> None:
    """Start-up checks, so a bad setting fails before step 1 rather than at the first round."""
    v = config.validation
    if not validation_enabled(host, config):
        return
    frames, t = v.validation_num_video_frames, bundle.temporal_compression
    if t > 1 and frames % t != 1:
        lower = (frames - 1) // t * t + 1
        raise ConfigError(
            f"validation_num_video_frames = {frames} does not fit the {bundle.family} VAE, which needs {t}k+1"
            f" frames: use {lower} or {lower + t}"
        )
    m = bundle.spatial_multiple
    for width, height in v.sizes():
        if width % m or height % m:
            raise ConfigError(
                f"validation_resolution {width}x{height} must be a multiple of {m} on both sides for"
                f" {bundle.family}: use {max(m, width // m * m)}x{max(m, height // m * m)}"
            )
    _check_conditioning(bundle, config)
    notice_unsupported(bundle, config)
    layers = v.validation_guidance_skip_layers
    if layers and bundle.num_blocks and max(layers) >= bundle.num_blocks:
        raise ConfigError(
            f"validation_guidance_skip_layers {layers} names block {max(layers)}, but this {bundle.family} model has"
            f" {bundle.num_blocks} blocks (0..{bundle.num_blocks - 1})"
        )


def _check_conditioning(bundle: ModelBundle, config: RunConfig) -> None:
    """An image-to-video model has a first frame for every prompt; a text-to-video one is given none."""
    from tuner.validate.first_frames import check_first_frames

    v = config.validation
    if bundle.image_conditioned:
        check_first_frames(config)
        return
    for name in ("validation_image", "validation_using_datasets"):
        if getattr(v, name):
            raise ConfigError(
                f"{name} gives image-to-video models their first frames; this {bundle.family} model generates from"
                " text alone: unset it"
            )


def round_variants(config: RunConfig, use_ema: EmaSwap | None) -> list[tuple[str, EmaSwap | None]]:
    """``(suffix, swap)`` per weight variant rendered, honouring ``ema_validation``.

    Without EMA weights (``use_ema`` is None) only the trained weights render.
    """
    mode = config.train.ema_validation if use_ema is not None else "none"
    if mode == "ema_only":
        return [("", use_ema)]
    if mode == "comparison":
        return [("", None), ("ema", use_ema)]
    return [("", None)]


def _skip_layer_guidance(config: RunConfig) -> SkipLayerGuidance | None:
    v = config.validation
    if not v.validation_guidance_skip_layers:
        return None
    return SkipLayerGuidance(
        layers=tuple(v.validation_guidance_skip_layers),
        start=v.validation_guidance_skip_layers_start,
        stop=v.validation_guidance_skip_layers_stop,
        scale=v.validation_guidance_skip_scale,
    )


def run_validation(
    host: PluginHost,
    bundle: ModelBundle,
    config: RunConfig,
    step: int,
    *,
    use_ema: EmaSwap | None = None,
    on_preview: PreviewReport | None = None,
) -> ValidationResult | None:
    """Render the round of ``step`` into ``output_dir/validation/step-N``.

    Each prompt is rendered at each ``validation_resolution`` (file names get a
    ``-WxH`` suffix when there are several), with the same seed every round.
    With ``use_ema`` (a callable returning a context manager that swaps the EMA
    weights in), ``ema_validation`` picks the EMA weights only, or both, the
    EMA files suffixed ``-ema`` and shown beside the trained ones on the sheet.
    With ``validation_preview`` (and a family that renders previews), each
    clip's previews go to ``previews/`` and into a row under the clip's row;
    ``on_preview`` is told of each preview file as soon as it is written
    (while the sampler runs, for a family that hands previews over then).

    Training state is untouched: the global RNG is forked, token routing is
    off, gradients are off and the denoiser returns to its mode afterwards.

    :return: every file written, by key, and the contact sheet; ``None`` when
        validation is off or nothing is configured.
    """
    from tuner.progress import task_progress

    v = config.validation
    if not validation_enabled(host, config):
        return None
    prompts = round_prompts(v)
    sizes = v.sizes()
    variants = round_variants(config, use_ema)
    folder = _round_folder(config, step)
    claim(folder.parent)  # output_dir/validation: tuner's own folder, never one of the user's
    _record(folder).unlink(missing_ok=True)  # a round rendered again is incomplete until it ends
    folder.mkdir(parents=True, exist_ok=True)

    def key_of(nickname: str, size: tuple[int, int]) -> str:
        return nickname if len(sizes) == 1 else f"{nickname}-{size[0]}x{size[1]}"

    keys = [key_of(n, s) for s in sizes for n in prompts]
    stems = file_stems([f"{k}-{suffix}" if suffix else k for k in keys for suffix, _ in variants])
    owner = host.families[config.model_family]
    images = _prompt_images(bundle, config)
    windows = first_windows(config, bundle, images)  # a dataset clip starts where its first training window does
    out = ValidationResult(step=step)
    rows: list[tuple[str, list[np.ndarray]]] = []
    per_clip = v.validation_num_inference_steps
    fps = video_fps(config, bundle)
    with inference_state(bundle), task_progress(
        f"validation (step {step}, {len(keys) * len(variants)} clip(s))", len(keys) * len(variants) * per_clip, unit="steps"
    ) as advance:
        reported = [0]  # sampler steps the family reported for the clip being rendered

        def sampler_step() -> None:
            reported[0] += 1
            advance(1)

        for size in sizes:
            for nickname, prompt in prompts.items():
                key = key_of(nickname, size)
                request = _request(config, step, key, prompt, size, folder, fps)
                request.preview_steps = request_steps(bundle, config)
                request.on_sampler_step = sampler_step
                shown, preview_rows = [], []
                if nickname in images:
                    # Image-to-video: the frame(s) the clip starts from, shown first in its row.
                    request.conditioning_frames = load_first_frames(images[nickname], *size, windows)
                    shown.append(thumbnails(request.conditioning_frames))
                for suffix, swap in variants:
                    reported[0] = 0
                    name = f"{key}-{suffix}" if suffix else key
                    writer = PreviewWriter(key, name, folder, stems[name], fps, on_preview)
                    request.on_preview = writer if request.preview_steps else None
                    with swap() if swap is not None else contextlib.nullcontext():
                        rendered = host.validate(bundle, request)
                    out.media[name], frames = _keep(rendered, key, folder, stems[name], fps, owner)
                    shown.append(thumbnails(frames))
                    files, previews = keep_previews(rendered, request.preview_steps, writer, owner)
                    if files:
                        out.previews[name] = files
                        preview_rows.append(preview_row(key, (suffix or "trained") if len(variants) > 1 else "", previews))
                    advance(max(0, per_clip - reported[0]))  # a family that does not report steps: the whole clip
                names = [s or "trained" for s, _ in variants]
                if nickname in images:
                    names.insert(0, "first frame")
                labels = " | ".join(names) if len(names) > 1 else ""
                rows.append((f"{key}  ({labels})" if labels else key, shown))
                rows.extend(preview_rows)  # each clip's previews right under it
        out.contact_sheet = contact_sheet(rows, folder / f"{CONTACT_SHEET_NAME}.png")
    _mark_complete(folder, out)
    return out


def _prompt_images(bundle: ModelBundle, config: RunConfig) -> dict[str, list[Path]]:
    from tuner.validate.first_frames import prompt_images

    return prompt_images(config) if bundle.image_conditioned else {}


def _round_folder(config: RunConfig, step: int) -> Path:
    return Path(config.train.output_dir) / "validation" / f"step-{step}"


def _record(folder: Path) -> Path:
    return folder.with_name(ROUND_RECORD.format(name=folder.name))


def _mark_complete(folder: Path, result: ValidationResult) -> None:
    """Write ``validation/.step-N.json`` last: a round without it was cut short (a crash) and is rendered again."""
    import json

    record = {
        "step": result.step,
        "media": {k: Path(v).name for k, v in result.media.items()},
        "contact_sheet": result.contact_sheet.name if result.contact_sheet is not None else None,
        "previews": {
            k: {str(s): Path(p).relative_to(folder).as_posix() for s, p in by_step.items()}
            for k, by_step in result.previews.items()
        },
    }
    done = _record(folder)
    with replacing(done, done.with_name(f"{done.name}.partial")) as tmp:
        tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")


def round_complete(config: RunConfig, step: int) -> bool:
    """The round of ``step`` finished: its record and every file it lists are there."""
    import json

    folder = _round_folder(config, step)
    try:
        record = json.loads(_record(folder).read_text(encoding="utf-8"))
        names = list(record["media"].values()) + ([record["contact_sheet"]] if record["contact_sheet"] else [])
        names += [name for by_step in record.get("previews", {}).values() for name in by_step.values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return all((folder / name).is_file() for name in names)


def video_fps(config: RunConfig, bundle: ModelBundle) -> int:
    """The rate validation videos play at: ``validation_fps``, else the model's own clock (so a 24 fps model's
    clips do not play slowed down to 16), else 16."""
    return config.validation.validation_fps or round(bundle.frame_rate or 16)


def _request(
    config: RunConfig, step: int, key: str, prompt: str, size: tuple[int, int], folder: Path, fps: int
) -> ValidationRequest:
    v = config.validation
    return ValidationRequest(
        step=step,
        key=key,
        prompt=prompt,
        negative_prompt=v.validation_negative_prompt,
        num_frames=v.validation_num_video_frames,
        width=size[0],
        height=size[1],
        num_inference_steps=v.validation_num_inference_steps,
        guidance_scale=v.validation_guidance,
        seed=v.validation_seed,
        output_dir=folder,
        fps=fps,
        skip_layer_guidance=_skip_layer_guidance(config),
    )


def _keep(
    rendered: ValidationResult | None, key: str, folder: Path, stem: str, fps: int, owner: str
) -> tuple[Path, np.ndarray]:
    """Write what the family rendered for ``key`` (or adopt the file it wrote); return the file and its frames."""
    if rendered is not None and key in rendered.frames:
        frames = rendered.frames[key]
        return write_media(frames, folder, stem, fps), frames
    if rendered is None or key not in rendered.media:
        raise PluginError(f"plugin '{owner}': validate returned nothing for prompt '{key}'")
    written = Path(rendered.media[key])
    path = written.with_name(f"{stem}{written.suffix}")
    if written != path:
        os.replace(written, path)
    return path, read_media(path)

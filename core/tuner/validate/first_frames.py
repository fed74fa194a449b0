"""First frames for validating image-to-video models: where each prompt's image comes from, and its pixels.

Three sources, for a model whose bundle says ``image_conditioned``:

* ``validation_image``: the image the main prompt (``validation_prompt``) starts from;
* a prompt library entry written as ``{"prompt": ..., "image": ..., "last_image"?: ...}``;
* ``validation_using_datasets`` + ``eval_dataset_id``: the files of that dataset
  (images, or clips: the first and last frames of the clip's first window as the
  run plans it, on the model's clock: `first_windows`), sorted by path; the
  round's prompts without an image of their own take them in turn;
* else ``validation_image`` again: every prompt still without an image (the guide's
  plain string prompt library beside one ``validation_image``).

A prompt left without an image stops the run at start-up (`missing_images`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tuner.errors import ConfigError, DataError
from tuner.validate.prompts import MAIN_PROMPT_NICKNAME, round_prompts
from tuner.validate.settings import read_prompt_images

if TYPE_CHECKING:
    import numpy as np

    from tuner.config import RunConfig
    from tuner.types.bundle import ModelBundle

__all__ = ["prompt_images", "check_first_frames", "load_first_frames", "first_windows"]

# A clip's frames to take, as `tuner.data.sizing.Geometry.take` and ``by_index`` say.
Window = tuple[tuple[int, ...], bool]

NO_IMAGES = (
    "{what}: this image-to-video model starts each validation clip from a first frame; give one with"
    " validation_image (for every prompt without its own) or an \"image\" in user_prompt_library entries, or set"
    " validation_using_datasets with eval_dataset_id naming an image or video dataset"
)


def _dataset_files(config: RunConfig) -> list[Path]:
    from tuner.data.layout import load_layout

    dataset = config.section("evaluation").eval_dataset_id
    layout = load_layout(config)
    for spec in layout.datasets:
        if spec.id == dataset:
            files = sorted(layout.backends[spec.type].list_files(spec).files)
            if not files:
                raise DataError(f"validation_using_datasets: dataset '{dataset}' ({spec.root}) has no image or clip")
            if not files[0].is_file():
                raise ConfigError(
                    f"validation_using_datasets: dataset '{dataset}' is of type '{spec.type}', whose files are not"
                    " on this disk: first frames are read from a dataset of files (type local or metadata)"
                )
            return files
    raise ConfigError(f"validation_using_datasets: eval_dataset_id '{dataset}' names no enabled dataset")


def prompt_images(config: RunConfig) -> dict[str, list[Path]]:
    """Nickname -> the image file(s) its clip starts from, for the prompts that have one."""
    v = config.validation
    out: dict[str, list[Path]] = {}
    prompts = round_prompts(v)
    if v.validation_image is not None and MAIN_PROMPT_NICKNAME in prompts:
        out[MAIN_PROMPT_NICKNAME] = [v.validation_image]
    if v.user_prompt_library is not None:
        out.update({k: p for k, p in read_prompt_images(v.user_prompt_library).items() if k in prompts})
    if v.validation_using_datasets:
        files = _dataset_files(config)
        for i, nickname in enumerate(n for n in prompts if n not in out):
            out[nickname] = [files[i % len(files)]]
    if v.validation_image is not None:
        # The guide writes its prompt library as plain strings beside one validation_image: it serves them all.
        out.update({n: [v.validation_image] for n in prompts if n not in out})
    return out


def check_first_frames(config: RunConfig) -> None:
    """Start-up check: every prompt of the round has a first frame, and every image file exists."""
    images = prompt_images(config)
    missing = [n for n in round_prompts(config.validation) if n not in images]
    if missing:
        what = "validation_prompt" if missing[0] == MAIN_PROMPT_NICKNAME else f"prompt '{missing[0]}'"
        raise ConfigError(NO_IMAGES.format(what=what))
    for nickname, files in images.items():
        for path in files:
            if not path.is_file():
                raise ConfigError(f"validation first frame of '{nickname}': no file at {path}")


def _fit(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize to cover ``width x height`` and centre-crop: no stretching."""
    import numpy as np
    from PIL import Image

    h, w = frame.shape[:2]
    scale = max(width / w, height / h)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    img = Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return np.asarray(img.crop((left, top, left + width, top + height)), dtype=np.uint8)


def first_windows(config: RunConfig, bundle: ModelBundle, images: dict[str, list[Path]]) -> dict[Path, Window]:
    """With ``validation_using_datasets``: each clip's first window, as the run trains it (its frame rate and
    ``frame_extraction``), so the validation clip starts where a training sample does."""
    from tuner.data.layout import load_layout
    from tuner.data.probe import ProbeError, file_digest, probe_media
    from tuner.data.windows import file_windows

    if not config.validation.validation_using_datasets:
        return {}
    dataset = config.section("evaluation").eval_dataset_id
    spec = next(s for s in load_layout(config).datasets if s.id == dataset)
    out: dict[Path, Window] = {}
    for path in {p for files in images.values() for p in files}:
        try:
            info = probe_media(path)
            if info.is_image or not path.is_relative_to(spec.root):
                continue
            planned = file_windows(
                spec, info, file_digest(path), model_fps=bundle.frame_rate, stride=bundle.temporal_compression,
                seed=config.train.seed, limit=bundle.max_frames,
            )
        except (ProbeError, OSError):
            continue  # decoding it says what is wrong
        if not isinstance(planned, str):
            clock, windows = planned
            out[path] = (clock.take(*windows[0]), clock.by_index)
    return out


def _first_last(path: Path, window: Window | None = None) -> list[np.ndarray]:
    """An image's pixels, or a clip's first and last frames (of ``window``): ``(H, W, 3)`` uint8 each."""
    import numpy as np

    from tuner.data.probe import IMAGE_EXTENSIONS, error_text

    if window is not None:
        return _window_ends(path, window)
    try:
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            from PIL import Image, ImageOps

            with Image.open(path) as img:
                return [np.asarray(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.uint8)]
        import av

        first = last = None
        with av.open(str(path)) as container:
            for frame in container.decode(container.streams.video[0]):
                last = frame.to_ndarray(format="rgb24")
                first = last if first is None else first
    except Exception as exc:  # PIL and PyAV raise many types for broken files
        raise DataError(f"validation first frame {path}: cannot decode: {error_text(exc)}") from None
    if first is None or last is None:
        raise DataError(f"validation first frame {path}: the clip has no frames")
    return [first, last]


def _window_ends(path: Path, window: Window) -> list[np.ndarray]:
    """The first and last frames of a clip's window, at the clip's own (upright) size, decoded by seeking."""
    from tuner.data.frames import decode_sample
    from tuner.data.probe import probe_media
    from tuner.data.sizing import Geometry

    take, by_index = window
    info = probe_media(path)
    size = (info.width, info.height)
    ends = Geometry(2, info.width, info.height, size, (0, 0), info.width / info.height, (take[0], take[-1]), by_index)
    try:
        first, last = decode_sample(path, ends)
    except DataError as exc:
        raise DataError(f"validation first frame {path}: {exc}") from None
    return [first, last]


def load_first_frames(
    files: list[Path], width: int, height: int, windows: dict[Path, Window] | None = None
) -> np.ndarray:
    """``(n, height, width, 3)`` uint8: the first frame, then the last when there is one.

    ``files`` is ``[image]``, ``[image, last_image]`` or ``[clip]`` (its first and last frames, or
    those of its window in ``windows``: `first_windows`).
    """
    import numpy as np

    windows = windows or {}
    frames = [f for path in files for f in _first_last(path, windows.get(path))]
    frames = frames[:1] + frames[-1:] if len(frames) > 1 else frames
    return np.stack([_fit(f, width, height) for f in frames])

"""The embedded default: a tiny model, synthetic clips and a config that trains on them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.config import tomllib
from tuner.durable import replacing

if TYPE_CHECKING:
    from tuner.plugins import PluginHost

__all__ = ["DEMO_CLIPS", "MODEL_MARKER", "prepare_tiny_model", "demo_config", "write_demo_media", "write_demo"]

DEMO_CLIPS = 2
_SIZE, _FRAMES = 64, 17


MODEL_MARKER = ".tuner-model.toml"


def prepare_tiny_model(
    host: PluginHost,
    family: str,
    model_dir: Path,
    seed: int = 0,
    variant: str | None = None,
    real_width_blocks: int | None = None,
) -> dict[str, Any]:
    """Write the family's tiny model into ``model_dir`` unless it is there; return its config overrides.

    ``real_width_blocks`` writes the model at its real layer widths with that many blocks instead
    (see the `write_tiny_model` hook).

    A marker file beside the weights records the overrides, with paths inside
    ``model_dir`` stored relative to it so the folder can move.
    """
    import tomlkit

    model_dir = model_dir.resolve()
    marker = model_dir / MODEL_MARKER
    if not marker.is_file():
        overrides = host.write_tiny_model(family, model_dir, seed, variant, real_width_blocks)
        paths = [k for k, v in overrides.items() if isinstance(v, str) and Path(v).resolve().is_relative_to(model_dir)]
        stored = {k: (str(Path(v).resolve().relative_to(model_dir)) if k in paths else v) for k, v in overrides.items()}
        with replacing(marker) as tmp:  # the marker says the model is whole: never half of one
            tmp.write_text(tomlkit.dumps({"overrides": stored, "paths": paths}))
    data = tomllib.loads(marker.read_text())
    return {k: (str(model_dir / v) if k in data["paths"] else v) for k, v in data["overrides"].items()}


def write_demo_media(
    folder: Path, count: int, model_overrides: dict[str, Any], width: int = _SIZE, height: int = _SIZE
) -> list[Path]:
    """Captioned synthetic training files: clips, or stills for a family that trains on images.

    A family says so through its tiny model's config overrides: ``data.num_frames``
    set to 1 (see the `write_tiny_model` hook).
    """
    from tuner.data.synthetic import write_synthetic_clips, write_synthetic_image

    if model_overrides.get("data.num_frames") == 1:
        return [write_synthetic_image(folder / f"still_{i:03d}.png", width, height, index=i) for i in range(count)]
    return write_synthetic_clips(folder, count=count, num_frames=_FRAMES, width=width, height=height)


def demo_config(family: str, plugin: str, prompt: str, model_overrides: dict[str, Any], steps: int) -> dict:
    """The demo run's config: overfit the clips fast enough to watch, validating halfway and at the end."""
    config: dict[str, Any] = {
        "plugins": [plugin],
        "model_family": family,
        "train": {
            "output_dir": "output",
            "seed": 42,
            "max_train_steps": steps,
            "learning_rate": 1e-3,
            "lora_rank": 8,
            "train_batch_size": 1,
            "checkpoint_step_interval": max(1, steps // 2),
            "flow_schedule_shift": 3.0,
        },
        "data": {
            "instance_data_dir": "clips",
            "num_frames": _FRAMES,
            "resolution": _SIZE,
            "cache_dir": "cache",
        },
        "validation": {
            "validation_prompt": prompt,
            "validation_resolution": f"{_SIZE}x{_SIZE}",
            "validation_num_video_frames": _FRAMES,
            "validation_num_inference_steps": 12,
            "validation_guidance": 1.0,
            "validation_step_interval": max(1, steps // 2),
        },
    }
    for key, value in model_overrides.items():
        section, _, name = key.partition(".")
        config.setdefault(section, {})[name] = value
    return config


def write_demo(
    host: PluginHost, family: str, folder: Path, *, steps: int = 60, seed: int = 0, variant: str | None = None
) -> Path:
    """Write model/ (model-VARIANT/), clips/ and config.toml into ``folder`` (reusing a model already there)."""
    import tomlkit

    folder = folder.resolve()
    model = folder / (f"model-{variant}" if variant else "model")
    overrides = prepare_tiny_model(host, family, model, seed, variant)
    # Paths relative to the config file keep the demo folder movable.
    overrides = {
        k: (str(Path(v).relative_to(folder)) if isinstance(v, str) and Path(v).is_relative_to(folder) else v)
        for k, v in overrides.items()
    }
    clips = write_demo_media(folder / "clips", DEMO_CLIPS, overrides)
    prompt = clips[0].with_suffix(".txt").read_text().strip()
    config = demo_config(family, host.families[family], prompt, overrides, steps)
    path = folder / "config.toml"
    with replacing(path) as tmp:
        tmp.write_text(tomlkit.dumps(config))
    return path

"""The embedded default: a tiny model, synthetic clips and a config that trains on them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.config import tomllib

if TYPE_CHECKING:
    from tuner.plugins import PluginHost

__all__ = ["DEMO_CLIPS", "demo_config", "write_demo"]

DEMO_CLIPS = 2
_SIZE, _FRAMES = 64, 17


def _relative(value: Any, folder: Path) -> Any:
    if isinstance(value, str) and Path(value).is_absolute():
        try:
            return str(Path(value).relative_to(folder))
        except ValueError:
            return value
    return value


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


def write_demo(host: PluginHost, family: str, folder: Path, *, steps: int = 60, seed: int = 0) -> Path:
    """Write model/, clips/ and config.toml into ``folder`` (reusing a model already there)."""
    import tomli_w

    from tuner.data.synthetic import write_synthetic_clips

    folder = folder.resolve()
    model_dir = folder / "model"
    marker = model_dir / ".tuner-model.toml"
    if marker.is_file():
        overrides = tomllib.loads(marker.read_text())
    else:
        overrides = {k: _relative(v, folder) for k, v in host.write_tiny_model(family, model_dir, seed).items()}
        marker.write_text(tomli_w.dumps(overrides))
    clips = write_synthetic_clips(folder / "clips", count=DEMO_CLIPS, num_frames=_FRAMES, width=_SIZE, height=_SIZE)
    prompt = clips[0].with_suffix(".txt").read_text().strip()
    config = demo_config(family, host.families[family], prompt, overrides, steps)
    path = folder / "config.toml"
    path.write_text(tomli_w.dumps(config))
    return path

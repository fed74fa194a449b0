"""Pictures of a config's learning-rate schedule and noise-level sampling (PNG, matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuner.config import RunConfig

__all__ = ["plot_lr", "plot_timesteps", "sampled_sigmas"]


def _figure(title: str):  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig, path: Path) -> Path:  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    from tuner.durable import replacing

    with replacing(path, path.with_name(f".{path.stem}.partial{path.suffix}")) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


def plot_lr(config: RunConfig, steps: int, path: Path) -> Path:
    """The learning rate at every optimizer step of a ``steps``-step run."""
    from tuner.train.schedules import lr_curve

    tc = config.train
    fig, ax = _figure(f"{tc.lr_scheduler}, warmup {tc.lr_warmup_steps}, peak {tc.learning_rate:g}")
    ax.plot(range(1, steps + 1), lr_curve(tc, steps))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    return _save(fig, path)


def sampled_sigmas(config: RunConfig, count: int, pixel_area: int) -> list[float]:
    """``count`` noise levels drawn exactly as training draws them."""
    import torch

    from tuner.train.timesteps import training_sigmas

    generator = torch.Generator().manual_seed(config.train.seed)
    return training_sigmas(config, count, generator, pixel_area, "cpu").tolist()


def plot_timesteps(config: RunConfig, path: Path, count: int = 20_000) -> Path:
    """A histogram of the sigmas sampled for frames of the config's training resolution."""
    from tuner.train.timesteps import auto_shift

    tc, area = config.train, config.data.resolution**2
    shift = f"auto ({auto_shift(area):.2f})" if tc.flow_schedule_auto_shift else f"{tc.flow_schedule_shift:g}"
    fig, ax = _figure(f"{tc.flow_timestep_sampling} sigmas, shift {shift}, {count} draws")
    ax.hist(sampled_sigmas(config, count, area), bins=100, range=(0.0, 1.0))
    ax.set_xlabel("sigma (0 = clean, 1 = pure noise)")
    ax.set_ylabel("count")
    return _save(fig, path)

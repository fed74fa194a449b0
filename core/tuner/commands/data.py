"""The ``tuner data preview`` and ``tuner cache`` commands (registered by `tuner.cli`).

Light to import: typer only; the data pipeline, the model and torch load inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuner.commands.errors import friendly_errors

__all__ = ["data_preview", "cache"]

_Config = Annotated[Path, typer.Option("--config", "-c", help="Config file (.toml or .json).")]
_Plugins = Annotated[
    list[str] | None, typer.Option("--plugin", "-p", help="Activate a plugin (repeatable), e.g. --plugin wan.")
]
_Sets = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override an option: KEY=VALUE, e.g. data.num_frames=33.")
]


def data_preview(
    config: _Config,
    plugin: _Plugins = None,
    set_: _Sets = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder to write into (default: <cache_dir>/preview).")
    ] = None,
    clips: Annotated[int, typer.Option("--clips", min=1, help="Clips shown per dataset (every window of each).")] = 3,
) -> None:
    """Write the exact frames that will be encoded (mp4 + contact sheet per dataset) and summarise each dataset."""
    from tuner.config import load_run_config

    def run() -> None:
        from tuner.data.preview import write_preview
        from tuner.progress import say

        host, cfg = load_run_config(config, plugin, set_)
        cache_dir = Path(cfg.data.cache_dir)
        folder = out or (cache_dir if cache_dir.is_absolute() else cfg.base_dir / cache_dir) / "preview"
        for dataset in write_preview(host, cfg, folder, clips):
            say(dataset.line())
        say(f"preview: {folder}")

    friendly_errors(run)()


def cache(
    config: _Config,
    plugin: _Plugins = None,
    set_: _Sets = None,
    num_processes: Annotated[
        int,
        typer.Option(
            "--num-processes",
            min=1,
            help="Encode in N processes (one per GPU; on a CPU, gloo) through accelerate's launcher, as train does.",
        ),
    ] = 1,
) -> None:
    """Build every cache the run will read (latents, features, captions) without training."""
    from tuner.config import load_run_config

    def run() -> None:
        if num_processes > 1:
            from tuner.train.launch import command_arguments, launch

            _, cfg = load_run_config(config, plugin, set_)  # a bad config fails here once, not in every process
            launch(num_processes, command_arguments("cache", str(config), plugin, set_), cfg.train.mixed_precision)
            return
        from tuner.distributed import on_main_process
        from tuner.train.precache import build_caches

        host, cfg = load_run_config(config, plugin, set_)
        data = build_caches(cfg, host)
        if on_main_process():
            typer.echo(f"cached: {len(data.samples)} sample(s) in {len(data.buckets)} bucket(s)")

    friendly_errors(run)()

"""The ``tuner configure`` and ``tuner config import`` commands (registered by `tuner.cli`).

Light to import: typer only; the wizard, the importer and torch load inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tuner.errors import ConfigError, TunerError

__all__ = ["configure", "config_import"]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


def _pairs(items: list[str] | None, flag: str) -> dict[str, Any]:
    from tuner.config import _parse_value

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE, got '{item}'")
        out[key.strip()] = _parse_value(value.strip())
    return out


def configure(
    folder: Annotated[Path, typer.Argument(help="A folder of clips (or images) with same-name .txt captions.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The config to write; the backend file goes beside it.")] = Path(
        "config.toml"
    ),
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Take every default without asking (for scripts).")] = False,
    plugin: Annotated[str | None, typer.Option("--plugin", "-p", help="The model family plugin to set up.")] = None,
    flavour: Annotated[str | None, typer.Option("--flavour", help="Answer: the model flavour.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Answer: the weights (hub id or folder).")] = None,
    rank: Annotated[int | None, typer.Option("--rank", help="Answer: the adapter rank.")] = None,
    frames: Annotated[int | None, typer.Option("--frames", help="Answer: frames per sample.")] = None,
    resolution: Annotated[int | None, typer.Option("--resolution", help="Answer: training resolution.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Answer: training steps.")] = None,
    memory: Annotated[str | None, typer.Option("--memory", help="Answer: the memory option (from the table).")] = None,
    answer: Annotated[
        list[str] | None, typer.Option("--answer", "-a", help="Answer any question: KEY=VALUE (e.g. adapter=lycoris).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Add a config entry: section.key=VALUE.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing config.")] = False,
) -> None:
    """Ask about a folder of clips and write a config and backend file that train on it."""
    try:
        from tuner.progress import console
        from tuner.setup.questions import Asker
        from tuner.setup.wizard import run_wizard

        if out.exists() and not force:
            raise ConfigError(f"{out} exists: pass --force to overwrite it, or --out another file")
        if not folder.is_dir():
            raise ConfigError(f"{folder} is not a folder of clips")
        named = dict(flavour=flavour, model=model, rank=rank, frames=frames, resolution=resolution, steps=steps, memory=memory)
        answers = {**_pairs(answer, "--answer"), **{k: v for k, v in named.items() if v is not None}}
        asker = Asker(console(), answers, assume_yes=yes)
        written = run_wizard(asker, folder, out, plugin, _pairs(set_, "--set"))
        _check_loads(written[0])
    except TunerError as exc:
        raise _fail(str(exc)) from None
    for path in written:
        typer.echo(f"wrote {path}")
    typer.echo(f"next: tuner train --config {written[0]}")


def _check_loads(path: Path) -> None:
    """The written config validates as `tuner train` reads it (a tracker package missing here is only noted)."""
    from tuner.config import load_run_config

    load_run_config(path, None, None, environment=False)


def config_import(
    config: Annotated[Path, typer.Argument(help="The flat config.json (SimpleTuner / Wan guide style).")],
    backend: Annotated[Path | None, typer.Argument(help="Its backend file (multidatabackend.json).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="The TOML to write (default: beside CONFIG).")] = None,
    backend_out: Annotated[
        Path | None, typer.Option("--backend-out", help="The backend file to write (default: datasets.json beside --out).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Write a config.json (+ multidatabackend.json) as the equivalent tuner TOML, with comments where it differs."""
    try:
        from tuner.setup.importer import import_config

        target = out or config.with_suffix(".toml")
        if target.resolve() == config.resolve():
            raise ConfigError(f"--out {target} is the input file: name another")
        if target.exists() and not force:
            raise ConfigError(f"{target} exists: pass --force to overwrite it, or --out another file")
        result = import_config(config, backend, target, backend_out, overwrite=force)
        _check_loads(result.config)
    except TunerError as exc:
        raise _fail(str(exc)) from None
    for key, why in result.dropped.items():
        typer.echo(f"dropped {key}: {why}", err=True)
    typer.echo(f"wrote {result.config}")
    if result.backend:
        typer.echo(f"wrote {result.backend}")

"""The ``tuner`` command line.

Importing this module is cheap: torch, diffusers and plugins load only inside
the commands that need them, so ``tuner --help`` answers at once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from tuner.commands.errors import fail, friendly_errors
from tuner.config_args import HELP as OPTION_FLAGS_HELP

__all__ = ["app", "main"]

app = typer.Typer(
    help="Fine-tune diffusion models (Wan video first) with LoRA adapters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(
    help="Configs: show the resolved values, the JSON Schema, the options reference (docs), import a guide-style JSON.",
    no_args_is_help=True,
)
app.add_typer(config_app, name="config")
plot_app = typer.Typer(help="Draw what a config will do: the LR schedule, the sampled noise levels.", no_args_is_help=True)
app.add_typer(plot_app, name="plot")

# The subcommands of tuner.commands (light: typer only); only their registration is here.
from tuner.commands.setup import config_import, configure  # noqa: E402 - light: typer only

app.command("configure")(configure)
config_app.command("import")(config_import)

from tuner.serve.command import serve  # noqa: E402 - light: typer only; the web server loads when it runs

app.command("serve")(serve)

from tuner.commands.data import cache, data_preview  # noqa: E402 - light: typer only

data_app = typer.Typer(help="See the training data as it will be encoded.", no_args_is_help=True)
app.add_typer(data_app, name="data")
data_app.command("preview")(data_preview)
app.command("cache")(cache)

from tuner.commands.lora import lora_app  # noqa: E402 - light: typer only

app.add_typer(lora_app, name="lora")

PluginOpt = Annotated[
    list[str] | None, typer.Option("--plugin", "-p", help="Activate a plugin (repeatable), e.g. --plugin wan.")
]
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Config file (.toml or .json).")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override an option: KEY=VALUE, e.g. train.learning_rate=1e-4.")
]


def _print_outputs(outputs: dict[str, Path]) -> None:
    from tuner.distributed import on_main_process

    if not on_main_process():  # one process of several speaks for the run
        return
    # Plain lines, never wrapped: scripts read these paths.
    typer.echo("done")
    for name, path in outputs.items():
        typer.echo(f"  {name}: {path}")


# Config options as flags after the config (tuner.config_args): --learning_rate 1e-4, --seed=3.
_EXTRA_OPTIONS = {"allow_extra_args": True, "ignore_unknown_options": True}


def _with_flags(ctx: typer.Context, sets: list[str] | None) -> list[str]:
    from tuner.config_args import option_overrides

    return [*(sets or []), *option_overrides(ctx.args)]


@app.command(context_settings=_EXTRA_OPTIONS, epilog=OPTION_FLAGS_HELP)
@friendly_errors
def train(
    ctx: typer.Context,
    config: ConfigOpt,
    plugin: PluginOpt = None,
    set_: SetOpt = None,
    num_processes: Annotated[
        int,
        typer.Option(
            "--num-processes",
            min=1,
            help="Train in N processes (one per GPU; on a CPU, gloo) through accelerate's launcher: the same as"
            " accelerate launch --num_processes N -m tuner train ... (docs/scale.md).",
        ),
    ] = 1,
) -> None:
    """Train an adapter as the config says."""
    from tuner.config import load_run_config

    set_ = _with_flags(ctx, set_)
    if num_processes > 1:
        from tuner.train.launch import command_arguments, launch

        _, cfg = load_run_config(config, plugin, set_)  # a bad config fails here once, not in every process
        launch(num_processes, command_arguments("train", str(config), plugin, set_), cfg.train.mixed_precision)
        return
    host, cfg = load_run_config(config, plugin, set_)
    from tuner.train.run import train as run_training

    _print_outputs(run_training(cfg, host))


@app.command()
@friendly_errors
def plugins(json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List installed plugins with their version, hooks, config sections, families and data backends."""
    from tuner.plugins import PluginHost

    infos = PluginHost.build(all_installed=True).describe()
    if json_:
        typer.echo(json.dumps([info.__dict__ for info in infos], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("plugin", "version", "sections", "families", "data backends", "hooks", title="tuner plugins")
    for info in infos:
        listed = (info.sections, info.families, info.data_backends, info.hooks)
        table.add_row(info.name, info.version, *(", ".join(names) for names in listed))
    Console().print(table)


@config_app.command("show", context_settings=_EXTRA_OPTIONS, epilog=OPTION_FLAGS_HELP)
@friendly_errors
def config_show(ctx: typer.Context, config: ConfigOpt, plugin: PluginOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved config (defaults filled in, overrides applied) as TOML."""
    import tomlkit

    from tuner.config import load_run_config

    _, cfg = load_run_config(config, plugin, _with_flags(ctx, set_))
    typer.echo(tomlkit.dumps(cfg.to_dict()))


@config_app.command("schema")
@friendly_errors
def config_schema(plugin: PluginOpt = None) -> None:
    """Print a JSON Schema of the config for the given plugins (for editors)."""
    from tuner.config import config_schema as build_schema
    from tuner.plugins import PluginHost

    typer.echo(json.dumps(build_schema(PluginHost.build(plugin or [])), indent=2))


@config_app.command("docs")
@friendly_errors
def config_docs(plugin: PluginOpt = None) -> None:
    """Print a Markdown reference of every option of the given plugins."""
    from tuner.config_docs import options_markdown
    from tuner.plugins import PluginHost

    typer.echo(options_markdown(PluginHost.build(plugin or [])), nl=False)


OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="PNG to write (default: in output_dir).")]


@plot_app.command("lr", context_settings=_EXTRA_OPTIONS, epilog=OPTION_FLAGS_HELP)
@friendly_errors
def plot_lr(
    ctx: typer.Context,
    config: ConfigOpt,
    plugin: PluginOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    steps: Annotated[int | None, typer.Option(help="Steps to draw (default: max_train_steps).", min=1)] = None,
) -> None:
    """Write a PNG of the learning rate over the run."""
    from tuner.config import load_run_config
    from tuner.train.plots import plot_lr as draw

    _, cfg = load_run_config(config, plugin, _with_flags(ctx, set_))
    total = steps or cfg.train.max_train_steps
    if not total:
        raise fail("max_train_steps is 0 (the length comes from epochs): pass --steps")
    typer.echo(draw(cfg, total, out or Path(cfg.train.output_dir) / "lr_schedule.png"))


@plot_app.command("timesteps", context_settings=_EXTRA_OPTIONS, epilog=OPTION_FLAGS_HELP)
@friendly_errors
def plot_timesteps(
    ctx: typer.Context, config: ConfigOpt, plugin: PluginOpt = None, set_: SetOpt = None, out: OutOpt = None
) -> None:
    """Write a PNG histogram of the noise levels (sigmas) training samples."""
    from tuner.config import load_run_config
    from tuner.train.plots import plot_timesteps as draw

    _, cfg = load_run_config(config, plugin, _with_flags(ctx, set_))
    typer.echo(draw(cfg, out or Path(cfg.train.output_dir) / "timesteps.png"))


@app.command()
@friendly_errors
def demo(
    plugin: Annotated[
        str | None, typer.Option("--plugin", "-p", help="Model family plugin to demo (default: the only one installed).")
    ] = None,
    folder: Annotated[Path, typer.Option("--dir", help="Where the demo's model, clips and output go.")] = Path("demo"),
    steps: Annotated[int, typer.Option(help="Training steps.", min=1)] = 60,
    prepare_only: Annotated[bool, typer.Option("--prepare-only", help="Write files, do not train.")] = False,
    variant: Annotated[
        str | None,
        typer.Option("--variant", "--flavour", help="The family's model variant (Wan: a model_flavour)."),
    ] = None,
) -> None:
    """Train on the embedded default: a tiny random model and synthetic clips, written locally."""
    from tuner.config import load_run_config
    from tuner.demo import write_demo
    from tuner.plugins import PluginHost

    # Built once each and handed to the load: the named plugin's host is the one the run needs.
    writer = PluginHost.build([plugin]) if plugin else PluginHost.build(all_installed=True)
    named, installed = (writer, None) if plugin else (None, writer)
    family = writer.resolve_family(None)
    path = write_demo(writer, family, folder, steps=steps, variant=variant)
    typer.echo(f"demo config: {path}")
    if prepare_only:
        return
    # A demo run is a throwaway: running the demo again starts it afresh over the last one.
    host, cfg = load_run_config(path, None, ["train.overwrite_output_dir=true"], host=named, installed=installed)
    from tuner.train.run import train as run_training

    _print_outputs(run_training(cfg, host))


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

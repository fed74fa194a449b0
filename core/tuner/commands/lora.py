"""``tuner lora info`` and ``tuner lora convert`` (registered by `tuner.cli`).

Light to import: typer only; safetensors, torch and the plugins load inside the commands.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tuner.errors import ConfigError, TunerError

if TYPE_CHECKING:
    from tuner.lora.layouts import LoraFile, LoraNaming

__all__ = ["lora_app", "describe"]

lora_app = typer.Typer(
    help="Adapter files from any trainer: what one holds and where it loads (info), another layout (convert).",
    no_args_is_help=True,
)

PluginOpt = Annotated[
    list[str] | None,
    typer.Option("--plugin", "-p", help="Read names with this family plugin only (default: every installed one)."),
]
_LAYOUT_WORDS = {
    "diffusers": "the diffusers pipeline's names (transformer.*), alpha folded in",
    "comfyui": "the original model's names (diffusion_model.*) with .alpha, as ComfyUI maps them",
    "kohya": "kohya/musubi names (lora_unet_*) with .alpha",
    "peft": "peft's own names, alpha in the metadata",
    "lycoris": "LyCORIS's own names (lycoris_*)",
}
# Metadata shown by info, in this order; other keys follow, and the stored peft config is summarised.
_FIRST = ("modelspec.title", "modelspec.architecture", "ss_sd_model_name", "modelspec.trigger_phrase", "ss_steps")


class Layout(str, Enum):
    comfyui = "comfyui"
    diffusers = "diffusers"
    kohya = "kohya"
    peft = "peft"
    lycoris = "lycoris"


def _namings(plugins: list[str] | None) -> dict[str, LoraNaming]:
    from tuner.plugins import PluginHost

    host = PluginHost.build(plugins) if plugins else PluginHost.build(all_installed=True)
    return host.lora_namings()


def _fail(exc: TunerError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=2)


def describe(source: LoraFile, namings: dict[str, LoraNaming]) -> list[str]:
    """The lines ``tuner lora info`` prints about a file."""
    weights, meta = source.weights, source.metadata
    lines = [f"file: {source.path.name}", f"layout: {source.layout}: {_LAYOUT_WORDS[source.layout]}"]
    family = source.family or "unknown (no installed family names these modules)"
    flavour = f", flavour {meta['tuner.flavour']}" if "tuner.flavour" in meta else ""
    lines.append(f"model family: {family}{flavour}")
    modules = weights.modules()
    if weights.kind == "lora":
        ranks = sorted(set(weights.ranks.values()))
        alphas = sorted(set(weights.alphas.values()))
        scale = ", ".join(f"{a / r:g}" for r in ranks for a in alphas) if len(ranks) == len(alphas) == 1 else "per module"
        lines.append(
            f"adapter: lora, rank {'/'.join(map(str, ranks))}, alpha {'/'.join(f'{a:g}' for a in alphas)} (scale {scale}),"
            f" {len(modules)} modules"
        )
    else:
        params = sorted({k[len(weights.module_of(k)) + 1 :] for k in weights.tensors})
        lines.append(f"adapter: lycoris ({', '.join(params)}), {len(modules)} modules")
    leaves = sorted({".".join(m.split(".")[2:]) if m.startswith("blocks.") else m for m in modules})
    lines.append(f"targets: {', '.join(leaves)}")
    kwargs = json.loads(meta.get("tuner.load_kwargs", "{}"))
    if "tuner.expert" in meta:
        label = f" ({meta['tuner.expert_label']})" if "tuner.expert_label" in meta else ""
        span = f", timesteps {meta['modelspec.timestep_range'].replace(',', '-')}" if "modelspec.timestep_range" in meta else ""
        lines.append(f"expert: {meta['tuner.expert']}{label}{span}")
    naming = namings.get(source.family or "")
    if naming is not None and source.layout in naming.loads_in:
        lines.append(f"loads in: {naming.loads_in[source.layout]}")
    if kwargs:
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        lines.append(f"diffusers: pipe.load_lora_weights(..., {args})")
        label = meta.get("tuner.expert_label", "").replace("_", "-")
        lines.append(
            f"warning: this {label + ' ' if label else ''}adapter belongs in {meta.get('tuner.expert', 'another denoiser')};"
            f" loaded without {args}, diffusers puts it into the pipeline's first denoiser, the wrong expert"
        )
    if source.ignored:
        lines.append(f"ignored: {len(source.ignored)} tensors of other components (e.g. {source.ignored[0]})")
    shown = [k for k in _FIRST if k in meta] + sorted(k for k in meta if k not in _FIRST)
    if shown:
        lines.append("metadata:")
        for key in shown:
            value = meta[key]
            if key == "lora_adapter_metadata":
                value = "diffusers/peft LoraConfig (" + ", ".join(
                    f"{k.split('.', 1)[1]}={v}" for k, v in json.loads(value).items() if k.endswith((".r", ".lora_alpha"))
                ) + ")"
            lines.append(f"  {key} = {value if len(value) <= 100 else value[:97] + '...'}")
    else:
        lines.append("metadata: none")
    return lines


@lora_app.command("info")
def info(
    file: Annotated[Path, typer.Argument(help="An adapter .safetensors file, from any trainer.")],
    plugin: PluginOpt = None,
) -> None:
    """What an adapter file holds: layout, rank, alpha, targets, metadata, and where it loads."""
    from tuner.lora.layouts import read_adapter

    try:
        namings = _namings(plugin)
        source = read_adapter(file, namings)
    except TunerError as exc:
        raise _fail(exc) from None
    for line in describe(source, namings):
        typer.echo(line)


@lora_app.command("convert")
def convert(
    src: Annotated[Path, typer.Argument(help="The adapter file to read, in any layout tuner reads.")],
    out: Annotated[Path, typer.Argument(help="The .safetensors file to write.")],
    to: Annotated[Layout, typer.Option("--to", help="The layout to write.")],
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    plugin: PluginOpt = None,
) -> None:
    """Write an adapter file in another layout (same weights, same metadata, re-described)."""
    from tuner.lora.layouts import read_adapter, write_adapter

    try:
        if out.suffix != ".safetensors":
            raise ConfigError(f"{out}: the output must be a .safetensors file")
        if out.exists() and not force:
            raise ConfigError(f"{out} exists: pass --force to replace it")
        if out.resolve() == src.resolve():
            raise ConfigError(f"{out} is the input file: write to another file")
        namings = _namings(plugin)
        source = read_adapter(src, namings)
        write_adapter(source, out, to.value, namings.get(source.family or ""))
    except TunerError as exc:
        raise _fail(exc) from None
    typer.echo(f"{src.name} ({source.layout}) -> {out} ({to.value}), {len(source.weights.modules())} modules")

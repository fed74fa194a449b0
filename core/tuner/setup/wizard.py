"""``tuner configure``: questions about a folder of clips, answered into a config and a backend file.

Every question's default comes from the installed family (`describe_family`) or
from the data (the core's own scan): the core names no family. The memory question
is answered from a printed estimate (`tuner.setup.estimate`) of each option.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import ConfigError, DataError
from tuner.setup.estimate import Estimate, GiB, estimate, workload
from tuner.setup.tomlwrite import ConfigDocument, relative_path

if TYPE_CHECKING:
    from tuner.data.scan import FileSample
    from tuner.family_profile import FamilyProfile, FlavourProfile, ModelShape
    from tuner.plugins import PluginHost
    from tuner.setup.questions import Asker

__all__ = ["MemoryOption", "memory_options", "default_memory", "steps_for", "run_wizard"]

DATASET_ID = "clips"


@dataclass(frozen=True)
class MemoryOption:
    """One row of the memory table: config entries and what the estimate makes of them."""

    name: str
    precision: str
    checkpointing: bool
    settings: dict[str, Any]
    offload: bool = False


def _owner(host: PluginHost, option: str) -> str | None:
    """The section of the installed plugin that offers ``option`` (memory features are plugins)."""
    return next((s for s, m in host.sections.items() if option in m.model_fields), None)


def memory_options(host: PluginHost, accelerator: bool = False) -> list[MemoryOption]:
    """Fastest first. A quantized base is offered when an installed plugin has ``base_model_precision``,
    group offload of the bf16 base when one has ``enable_group_offload`` (with a side stream on a CUDA
    ``accelerator``); never both, which the offload plugin refuses."""
    options = [
        MemoryOption("bf16", "no_change", False, {"train.gradient_checkpointing": False}),
        MemoryOption("bf16+checkpointing", "no_change", True, {"train.gradient_checkpointing": True}),
    ]
    owner = _owner(host, "base_model_precision")
    if owner is not None:
        for precision in ("int8-quanto", "fp8-quanto"):
            options.append(
                MemoryOption(
                    f"{precision.split('-')[0]}+checkpointing",
                    precision,
                    True,
                    {"train.gradient_checkpointing": True, f"{owner}.base_model_precision": precision},
                )
            )
    offload = _owner(host, "enable_group_offload")
    if offload is not None:
        for base in options[1:]:
            # bf16 only: offloading cannot move quantized weights (tensor subclasses) and refuses them at start.
            if base.precision == "no_change":
                stream = {f"{offload}.group_offload_use_stream": True} if accelerator else {}
                settings = {**base.settings, f"{offload}.enable_group_offload": True, **stream}
                options.append(MemoryOption(f"{base.name}+offload", base.precision, True, settings, offload=True))
    return options


def default_memory(rows: list[tuple[MemoryOption, Estimate]], limit_gib: float) -> tuple[str, bool]:
    """The fastest option whose estimate fits ``limit_gib`` (and True), else the smallest (and False)."""
    fitting = [(o, e) for o, e in rows if e.total_gib <= limit_gib]
    if fitting:
        return min(fitting, key=lambda r: r[1].seconds)[0].name, True
    return min(rows, key=lambda r: r[1].total)[0].name, False


def steps_for(samples: int) -> int:
    """100 steps per sample, rounded to 100, between 500 and 5000: small sets see each clip ~100 times."""
    return int(min(5000, max(500, round(100 * samples, -2))))


def _scan(host: PluginHost, family: str, folder: Path, cache: Path) -> list[FileSample]:
    """The folder's usable files, read by the same scan a run does (captions, sizes, frame counts)."""
    from tuner.config import resolve_config
    from tuner.data.scan import scan_datasets

    config = resolve_config(
        {"model_family": family, "data": {"instance_data_dir": str(folder), "cache_dir": str(cache)}},
        host,
        base_dir=Path.cwd(),
    )
    files = [f for d in scan_datasets(config).datasets for f in d.files]
    if not files:
        raise DataError(f"{folder}: no captioned clips or images found (captions are same-name .txt files)")
    return files


def _transformer_config(flavour: FlavourProfile, source: str) -> dict[str, Any]:
    """A local model's own denoiser config, else the flavour's published one."""
    for name in ("transformer/config.json", "config.json"):
        path = Path(source).expanduser() / name
        if path.is_file():
            return json.loads(path.read_text())
    return flavour.transformer_config


def _memory_table(console: Any, rows: list[tuple[MemoryOption, Any]], limit: float, tflops: float) -> None:
    from rich.table import Table

    table = Table(title=f"estimated per step, batch 1 (accelerator: {limit:g} GiB, {tflops:g} TFLOP/s sustained)")
    for column in ("option", "weights", "adapter+optimizer", "activations", "total", "step", "fits"):
        table.add_column(column)
    for option, est in rows:
        table.add_row(
            option.name,
            f"{est.weights / GiB:.1f} GiB",
            f"{est.adapter / GiB:.2f} GiB",
            f"{est.activations / GiB:.1f} GiB",
            f"{est.total_gib:.1f} GiB",
            f"{est.seconds:.2f} s",
            "yes" if est.total_gib <= limit else "no",
        )
    console.print(table)


def _prompt_library(
    out_dir: Path, files: list[FileSample], captions: list[str], first_frames: bool
) -> tuple[dict[str, Any], list[Path]]:
    """Nickname -> caption; for an image-to-video model, each entry with the first frame of its caption's file."""
    if not first_frames:
        return {f"caption_{i}": c for i, c in enumerate(captions)}, []
    folder = out_dir / "first-frames"
    folder.mkdir(exist_ok=True)
    library: dict[str, Any] = {}
    for i, caption in enumerate(captions):
        sample = next(f for f in files if f.caption == caption)
        image = _first_frame(sample, folder / f"caption_{i}.png")
        library[f"caption_{i}"] = {"prompt": caption, "image": f"{folder.name}/{image.name}"}
    return library, [folder / f"caption_{i}.png" for i in range(len(captions))]


def _first_frame(sample: FileSample, path: Path) -> Path:
    """The first frame of ``sample`` as a PNG: an image-to-video model's validation needs one."""
    from PIL import Image

    from tuner.durable import replacing

    with replacing(path) as tmp:  # whole or absent, whatever stops the write
        if sample.info.is_image:
            Image.open(sample.path).convert("RGB").save(tmp, format="PNG")
            return path
        import av

        with av.open(str(sample.path)) as container:
            frame = next(container.decode(video=0))
            frame.to_image().convert("RGB").save(tmp, format="PNG")
    return path


def _ask_model(asker: Asker, family: str, profile: FamilyProfile) -> tuple[FlavourProfile, str]:
    names = [f.name for f in profile.flavours]
    asker.console.print("\n".join(f"  {f.name}: {f.summary}" for f in profile.flavours))
    name = asker.ask(
        "flavour", f"{family} model", "the base model the adapter trains on; it loads only with that model",
        names[0], choices=names,
    )
    flavour = profile.flavour(name)
    source = asker.ask(
        "model", "weights (hub id or local folder)",
        "a hub id downloads on the first run; a diffusers-layout folder works offline", flavour.model_source,
    )
    return flavour, source


def run_wizard(
    asker: Asker, folder: Path, out: Path, family_plugin: str | None, extra: dict[str, Any]
) -> list[Path]:
    """Ask, then write ``out`` (the TOML), the backend file and any prompt/first-frame/LyCORIS file beside it."""
    from tuner.plugins import PluginHost

    console = asker.console
    installed = PluginHost.build(all_installed=True)
    families = sorted(f for f in installed.families if installed.implements(f, "describe_family"))
    if family_plugin:
        families = [f for f in families if installed.families[f] == family_plugin] or families
    if not families:
        raise ConfigError("no installed model family can be set up by tuner configure (none has describe_family)")
    out = out.resolve()
    files = _scan(installed, families[0], folder.resolve(), out.parent / "cache")
    clips = [f for f in files if not f.info.is_image]
    console.print(
        f"{folder}: {len(files)} captioned files ({len(clips)} clips), median"
        f" {statistics.median(f.info.width for f in files):.0f}x{statistics.median(f.info.height for f in files):.0f}"
    )
    profiles = {f: installed.describe_family(f) for f in families}
    # Clips suggest a video family (one with a frame rule), stills an image family.
    suited = [f for f in families if bool(profiles[f].frame_step) == bool(clips)] or families
    family = asker.ask(
        "family", "model family", "which kind of model the adapter is for; the data suggests the first",
        suited[0], choices=families,
    )
    profile = profiles[family]
    flavour, source = _ask_model(asker, family, profile)

    adapter = asker.ask(
        "adapter", "adapter", "lora: small and loads everywhere; lycoris (LoKr): more expressive per parameter",
        "lora", choices=["lora", "lycoris"],
    )
    rank = asker.ask(
        "rank", "rank", "the adapter's capacity: 16 learns a style or a subject, 32-64 several, at more memory",
        16, kind=int, check=lambda r: None if 1 <= r <= 1024 else "a rank from 1 to 1024",
    )
    frames = 1
    if profile.frame_step:
        shortest = min((f.info.frames for f in clips), default=flavour.frames)
        rule = f"{profile.frame_step}k+1"
        frames = asker.ask(
            "frames", f"frames per sample ({rule})",
            f"each clip trains on its first N frames; the model needs {rule}; shorter clips are skipped",
            profile.nearest_frames(min(flavour.frames, shortest)), kind=int,
            check=lambda n: None if profile.valid_frames(n) else f"{n} is not {rule}: try {profile.nearest_frames(n)}",
        )
    short_side = statistics.median(min(f.info.width, f.info.height) for f in files)
    resolution = asker.ask(
        "resolution", "training resolution (pixels, side of a square of the same area)",
        "larger learns finer detail at quadratically more memory; above the data's size gains nothing",
        int(min(flavour.resolution, short_side)), kind=int,
        check=lambda r: None if r >= profile.spatial_multiple else f"at least {profile.spatial_multiple} pixels",
    )
    buckets = "aspect_ratio"
    if profile.frame_step:
        buckets = asker.ask(
            "buckets", "buckets", "aspect_ratio groups clips by shape so none is cropped; resolution_frames also"
            " by length", "aspect_ratio", choices=["aspect_ratio", "resolution_frames"],
        )
    steps = asker.ask(
        "steps", "training steps", f"100 per sample for {len(files)} samples (500 to 5000)", steps_for(len(files)),
        kind=int, check=lambda s: None if s >= 1 else "at least 1 step",
    )
    captions = list(dict.fromkeys(f.caption for f in files))
    count = asker.ask(
        "prompts", "validation prompts (taken from the captions)",
        "captions like the data's show what the adapter learned", min(2, len(captions)), kind=int,
        check=lambda n: None if 1 <= n <= len(captions) else f"between 1 and {len(captions)}",
    )

    # Memory: the estimate for the model, resolution and frames chosen.
    import torch

    try:
        shape: ModelShape = profile.shape(_transformer_config(flavour, source))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(f"model '{source}': its denoiser config does not fit the {family} family ({exc})") from None
    side = max(profile.spatial_multiple, resolution // profile.spatial_multiple * profile.spatial_multiple)
    work = workload(profile, flavour, frames, side, side, rank)
    detected = torch.cuda.get_device_properties(0).total_memory / GiB if torch.cuda.is_available() else 24.0
    limit = asker.ask(
        "accelerator_gib", "accelerator memory (GiB)", "the estimate is compared with it", round(detected, 1),
        kind=float, check=lambda g: None if g > 0 else "a positive number",
    )
    tflops = asker.ask(
        "tflops", "sustained TFLOP/s", "step time = FLOPs / this; 80 is an RTX 4090 at half its bf16 peak", 80.0,
        kind=float, check=lambda t: None if t > 0 else "a positive number",
    )
    options = memory_options(installed, torch.cuda.is_available())
    rows = [
        (o, estimate(shape, work, precision=o.precision, checkpointing=o.checkpointing, offload=o.offload, tflops=tflops))
        for o in options
    ]
    _memory_table(console, rows, limit, tflops)
    default, fits = default_memory(rows, limit)
    memory = asker.ask(
        "memory", "memory option", "the fastest option that fits" if fits else "nothing fits: the smallest",
        default, choices=[o.name for o in options],
    )
    # The config is for the accelerator the estimate describes, wherever the wizard runs: bf16, as counted.
    mixed = asker.ask(
        "mixed_precision", "mixed precision", "bf16, what the estimate counts; 'no' only to train on a CPU",
        "bf16", choices=["bf16", "fp16", "no"],
    )

    if asker.answers:  # checked before anything is written
        left, asked = ", ".join(asker.answers), ", ".join(asker.asked)
        raise ConfigError(f"--answer names no question: {left} (asked: {asked})")

    # Write the files.
    written = []
    doc = ConfigDocument(
        header=[f"Written by `tuner configure` for {folder}.", f"Train with: tuner train --config {out.name}"]
    )
    doc.set("model_family", family)
    doc.set("plugins", sorted({installed.families[family], *_plugins_of(installed, options, memory)}))
    for key, value in flavour.settings.items():
        doc.set(key, value, "the model asked for")
    local = Path(source).expanduser()
    shown = relative_path(local.resolve(), out.parent) if local.exists() else source
    doc.set(flavour.model_key, shown, "where the weights come from (asked)")
    doc.set("train.output_dir", "output", "checkpoints, the adapter and validation media")
    doc.set("train.max_train_steps", steps, f"{steps} steps (asked)")
    doc.set("train.checkpoint_step_interval", max(1, steps // 4), "a checkpoint every quarter of the run")
    doc.set("train.learning_rate", 1e-4, "LoRA's usual rate")
    doc.set("train.lora_rank", rank, "the adapter's capacity (asked)")
    doc.set("train.mixed_precision", mixed, "autocast precision (asked)")
    for key, value in next(o for o in options if o.name == memory).settings.items():
        doc.set(key, value, f"memory option '{memory}' (asked, from the estimate)")
    if adapter == "lycoris":
        options_ = {"algo": "lokr", "multiplier": 1.0, "linear_dim": rank, "linear_alpha": rank, "factor": 16}
        lycoris = _write_json(out.parent / "lycoris_config.json", options_)
        written.append(lycoris)
        doc.set("train.lora_type", "lycoris", "LyCORIS (asked)")
        doc.set("train.lycoris_config", lycoris.name, "LoKr at the asked rank on the family's default layers")
    backend = _write_backend(out.parent, folder, profile, resolution, frames, buckets)
    written.append(backend)
    doc.set("data.data_backend_config", backend.name, "the datasets: this folder's clips, and where caches go")
    doc.set("data.num_frames", frames, "frames per sample (asked)")
    doc.set("data.resolution", resolution, "training resolution (asked)")
    doc.set("data.cache_dir", "cache", "latent and text caches")
    library, frames_written = _prompt_library(out.parent, files, captions[:count], flavour.needs_first_frame)
    prompts = _write_json(out.parent / "prompts.json", library)
    written += [prompts, *frames_written]
    why = " with their clips' first frames" if frames_written else ""
    doc.set("validation.user_prompt_library", prompts.name, f"{count} of the captions (asked){why}")
    for key, value in flavour.validation.items():
        doc.set(key, value, "what the model samples well with")
    doc.set("validation.validation_resolution", f"{side}x{side}", "the training size")
    doc.set("validation.validation_num_video_frames", frames, "the training length")
    doc.set("validation.validation_step_interval", max(1, steps // 4), "a validation every quarter of the run")
    for key, value in extra.items():
        doc.set(key, value, "set on the command line")
    written.insert(0, doc.write(out))
    return written


def _write_json(path: Path, data: Any) -> Path:
    from tuner.durable import replacing

    with replacing(path) as tmp:  # a full disk leaves the old file, never half of one
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _write_backend(
    out_dir: Path, folder: Path, profile: FamilyProfile, resolution: int, frames: int, buckets: str
) -> Path:
    """The backend file: the folder as one dataset (paths relative to ``out_dir``) and the text-embeds cache."""
    entry: dict[str, Any] = {
        "id": DATASET_ID,
        "type": "local",
        "dataset_type": "video" if profile.frame_step else "image",
        "instance_data_dir": relative_path(folder.resolve(), out_dir),
        "caption_strategy": "textfile",
        "resolution": resolution,
        "resolution_type": "pixel_area",
        "cache_dir_vae": f"cache/vae/{DATASET_ID}",
    }
    if profile.frame_step:
        entry["video"] = {"num_frames": frames, "bucket_strategy": buckets}
        if buckets == "resolution_frames":
            entry["video"]["frame_interval"] = profile.frame_step
    text = {"id": "text-embeds", "type": "local", "dataset_type": "text_embeds", "default": True, "cache_dir": "cache/text"}
    return _write_json(out_dir / "datasets.json", [entry, text])


def _plugins_of(host: PluginHost, options: list[MemoryOption], memory: str) -> set[str]:
    """The plugins whose options the chosen memory option sets."""
    chosen = next(o for o in options if o.name == memory)
    owners = {host.section_owner.get(key.split(".")[0]) for key in chosen.settings}
    return {owner for owner in owners if owner not in (None, "core")}

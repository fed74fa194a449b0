"""``tuner config import``: a guide-style flat ``config.json`` (+ its backend file) as a tuner TOML.

Nothing here maps keys by a table of its own: the config is read and validated by
the same code ``tuner train`` uses (`tuner.config`), flat keys find their section
through `tuner.config_keys.nest_flat_keys`, and the backend file is read by
`tuner.data.backends.parse_backend_file`. What the importer adds is the writing:
the values as they were validated, every path rewritten so that it resolves from
the new file's folder to the same place, and a comment wherever the TOML says
something differently from the JSON (a value read as another type, a path, a key
dropped because tuner does not offer it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import ConfigError
from tuner.setup.tomlwrite import ConfigDocument, relative_path

if TYPE_CHECKING:
    from tuner.config import RunConfig
    from tuner.plugins import PluginHost

__all__ = ["ImportResult", "import_config", "load_guide_config"]

# Keys of a backend entry that name files to read, and folders that are written.
_INPUT_KEYS = ("instance_data_dir",)
_OUTPUT_KEYS = ("cache_dir_vae", "cache_dir", "cache_dir_conditioning_image_embeds")


@dataclass
class ImportResult:
    """What the import wrote and what it left out."""

    config: Path
    backend: Path | None
    dropped: dict[str, str] = field(default_factory=dict)  # key -> why
    plugins: list[str] = field(default_factory=list)


def _plugins_for(
    raw: Mapping[str, Any], every: PluginHost | None = None
) -> tuple[PluginHost, list[str], dict[str, str]]:
    """The host ``tuner train`` would build for ``raw``: its plugins, those its keys imply, the family's.

    ``every``: `tuner.config_keys.every_installed`, built here when not given.
    """
    from tuner.config_keys import every_installed, implied_plugins
    from tuner.plugins import PluginHost

    names = list(raw.get("plugins", []))
    family = raw.get("model_family")
    every = every or every_installed()
    if isinstance(family, str):
        owner = (every or PluginHost.build(all_installed=True)).families.get(family)
        if owner and owner not in names:
            names.append(owner)
    implied = implied_plugins(raw, names, every)
    names += [p for p in implied if p not in names]
    return PluginHost.build(names), names, implied


def _split(
    raw: Mapping[str, Any], host: PluginHost, every: PluginHost | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The keys the loader takes (each tried through the loader's own nesting), and the others with its reason
    (naming the plugin among ``every`` installed one that takes it)."""
    from tuner.config_keys import nest_flat_keys

    kept: dict[str, Any] = {}
    dropped: dict[str, str] = {}
    for key, value in raw.items():
        try:
            nest_flat_keys({key: value}, host.sections, every)
            kept[key] = value
            continue
        except ConfigError as exc:
            reason = str(exc)
        name = key[2:] if key.startswith("--") else key  # the guide's literal '--key' spelling
        try:
            nest_flat_keys({name: value}, host.sections, every)
            kept[name] = value
        except ConfigError:
            dropped[key] = reason.removeprefix(f"config key '{key}' ")
    return kept, dropped


def load_guide_config(raw: Mapping[str, Any], host: PluginHost, config_path: Path) -> RunConfig:
    """Validate ``raw`` exactly as ``tuner train --config config_path`` does, under the same path rule."""
    from tuner.config import resolve_config
    from tuner.config_paths import path_rule_for

    # The config may be written for another machine: a tracker's package missing here is noted, not refused.
    return resolve_config(raw, host, rule=path_rule_for(config_path, raw, host.sections), environment=False)


def _backend_entries(config: RunConfig, source: Path, out_dir: Path) -> list[dict[str, Any]]:
    """The backend file's entries as validated, each path rewritten to resolve from ``out_dir`` as before."""
    from tuner.data.backends import parse_backend_file
    from tuner.data.layout import _output_path, locate_input

    base = config  # the run's path rule decides where the file's relative paths point
    entries = []
    for _, entry in parse_backend_file(source, config.data_backends):
        item = entry.model_dump(mode="json", exclude_unset=True)
        for key in _INPUT_KEYS:
            if item.get(key):
                item[key] = relative_path(locate_input(item[key], base), out_dir)
        for key in _OUTPUT_KEYS:
            if item.get(key):
                item[key] = relative_path(_output_path(item[key], base), out_dir)
        if isinstance(item.get("parquet"), dict) and item["parquet"].get("path"):
            item["parquet"]["path"] = relative_path(locate_input(item["parquet"]["path"], base), out_dir)
        entries.append(item)
    return entries


def _section_entries(
    doc: ConfigDocument, nested: Mapping[str, Any], config: RunConfig, out_dir: Path, skip: set[str], source: str
) -> None:
    for section, values in nested.items():
        if not isinstance(values, Mapping):
            continue
        model = config.section(section)
        dumped = model.model_dump(mode="json")
        for key, written in values.items():
            if key in skip:
                continue
            value = getattr(model, key)
            if isinstance(value, Path):
                shown = relative_path(value, out_dir)
                comment = None if shown == written else f"{source}: {json.dumps(written)}; here relative to this file"
                doc.set(f"{section}.{key}", shown, comment)
                continue
            value = dumped[key]
            if isinstance(value, str) and key.endswith(("_path", "name_or_path")):
                local = config.resolve_path(value)
                if local != value:  # a local model folder or file: kept pointing at it
                    note = f"{source}: {json.dumps(written)}; here relative to this file"
                    doc.set(f"{section}.{key}", relative_path(Path(local), out_dir), note)
                    continue
            comment = None
            if value is None:
                doc.note(section, f"{key} = {json.dumps(written)} in {source}: read as unset, left out")
                continue
            if value != written or isinstance(value, str) != isinstance(written, str):
                was, now = json.dumps(written, ensure_ascii=False), json.dumps(value, ensure_ascii=False)
                comment = f"{source}: {was}, read as {now}"
            doc.set(f"{section}.{key}", value, comment)


def _default_paths(doc: ConfigDocument, config: RunConfig, out_dir: Path, source: str) -> None:
    """Path options left at their default resolve beside the config: keep them where they were."""
    for section, model in config.sections.items():
        for key, info in type(model).model_fields.items():
            value = getattr(model, key)
            if not isinstance(value, Path) or doc.get(f"{section}.{key}") is not None or key == "data_backend_config":
                continue
            shown = relative_path(value, out_dir)
            if info.default is not None and Path(str(info.default)).as_posix() == shown:
                continue
            doc.set(f"{section}.{key}", shown, f"the default {str(info.default)!r}, beside {source}: kept where it was")


def import_config(
    config_path: Path, backend_path: Path | None, out: Path, backend_out: Path | None = None, overwrite: bool = False
) -> ImportResult:
    """Write ``out`` (a tuner TOML) and, with a backend file, ``backend_out`` (default: ``datasets.json`` beside it)."""
    from tuner.config import read_config_file
    from tuner.config_checks import check_top_level
    from tuner.config_keys import every_installed, nest_flat_keys

    out = out.resolve()
    raw = read_config_file(config_path)
    check_top_level(raw)
    if backend_path is not None:
        if not backend_path.is_file():
            raise ConfigError(f"backend file not found: {backend_path}")
        raw = {**raw, "data_backend_config": str(backend_path.resolve())}
    every = every_installed()  # once: the plugins keys imply, the plugins of the keys dropped
    host, names, implied = _plugins_for(raw, every)
    kept, dropped = _split(raw, host, every)
    config = load_guide_config(kept, host, config_path)
    source = config.data.data_backend_config
    if source is not None:
        from tuner.data.layout import locate_input

        source = locate_input(source, config)
        backend_out = (backend_out or out.parent / "datasets.json").resolve()
        if backend_out in (source.resolve(), config_path.resolve()):
            raise ConfigError(f"--backend-out {backend_out} would overwrite an input file: name another")
        if backend_out.exists() and not overwrite:
            raise ConfigError(f"{backend_out} exists: pass --force to overwrite it, or --backend-out another file")
    inputs = " and ".join(p.name for p in (config_path, backend_path) if p is not None)
    doc = ConfigDocument(
        header=[
            f"Imported from {inputs} by `tuner config import`.",
            "Values are as tuner validated them; paths are relative to this file.",
            "Run it with: tuner train --config " + out.name,
        ]
    )
    doc.set("model_family", config.model_family)
    plugins = [n for n in names if n in host.versions]
    why = "; ".join(f"{p}: set by '{k}'" for p, k in implied.items())
    doc.set("plugins", plugins, f"switched on by the config's keys ({why})" if why else None)
    for key, reason in dropped.items():
        doc.note("", f"dropped {key} = {json.dumps(raw[key], ensure_ascii=False)}: {reason}")
    if "tracking" in config.sections:
        for line in config.section("tracking").missing_packages():
            doc.note("", f"not installed here: {line} before training (or set report_to = 'none')")
    nested = nest_flat_keys(kept, host.sections)
    _section_entries(doc, nested, config, out.parent, {"data_backend_config"}, config_path.name)
    _default_paths(doc, config, out.parent, config_path.name)
    written_backend = None
    if source is not None and backend_out is not None:
        entries = _backend_entries(config, source, backend_out.parent)
        backend_out.parent.mkdir(parents=True, exist_ok=True)
        from tuner.durable import replacing

        with replacing(backend_out) as tmp:  # a full disk leaves no half-written backend file
            tmp.write_text(json.dumps(entries, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written_backend = backend_out
        doc.set(
            "data.data_backend_config",
            relative_path(backend_out, out.parent),
            f"{source.name}, with its paths relative to this folder",
        )
    doc.write(out)
    return ImportResult(out, written_backend, dropped, plugins)

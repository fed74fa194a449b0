"""Reading, merging and validating a run's config.

A config is a TOML or JSON file with two top-level keys of the core's own
(``plugins``, ``model_family``) and one table per section: the core's ``train``,
``data`` and ``validation`` and one per active plugin (``[wan]``, ...). Because
option names are unique across sections, an option may also be written at the
top level, as the Wan guide writes them (``"--user_prompt_library"`` too); it is
moved into its section. Relative paths follow one rule, `tuner.config_paths`:
a flat ``config.json`` reads them from the start folder, anything else from its
own folder. A command loads its config once, with `load_run_config`, and hands the
config and the plugin host it built down to what runs.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from tuner.config_checks import blank_paths_unset, check_names, check_numbers, check_top_level, check_unset
from tuner.config_keys import implied_plugins, nest_flat_keys
from tuner.config_paths import PathRule
from tuner.errors import ConfigError, did_you_mean, shown

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    from tuner.plugins import PluginHost
    from tuner.data.settings import DataSection
    from tuner.data.storage import DataBackend
    from tuner.train.settings import TrainSection
    from tuner.validate.settings import ValidationSection

__all__ = [
    "RunConfig",
    "read_config_file",
    "parse_overrides",
    "merge",
    "resolve_config",
    "load_run_config",
    "config_schema",
]

@dataclass(frozen=True)
class RunConfig:
    """The validated config of one run: every section as its typed model."""

    plugins: list[str]
    model_family: str
    sections: dict[str, BaseModel]
    base_dir: Path = field(default_factory=Path.cwd)
    path_rule: PathRule | None = None  # how base_dir was chosen (unset: given by the caller)
    # The dataset types the active plugins registered (`tuner.hookspecs.register_data_backends`), by name.
    data_backends: Mapping[str, DataBackend] = field(default_factory=dict)

    @property
    def paths(self) -> PathRule:
        """The rule relative paths follow (`tuner.config_paths`)."""
        return self.path_rule or PathRule(self.base_dir)

    def section(self, name: str) -> Any:
        """The typed section ``name`` (e.g. ``config.section("wan")``)."""
        try:
            return self.sections[name]
        except KeyError:
            raise ConfigError(f"config has no section '{name}' (is its plugin active?)") from None

    @property
    def train(self) -> TrainSection:
        return self.sections["train"]  # type: ignore[return-value]

    @property
    def data(self) -> DataSection:
        return self.sections["data"]  # type: ignore[return-value]

    @property
    def validation(self) -> ValidationSection:
        return self.sections["validation"]  # type: ignore[return-value]

    def resolve_path(self, value: str | Path) -> str:
        """A model path or hub id: a relative path that exists under the path rule's folder, or that
        looks local (``./x``, ``a/b/c``), is that path; anything else is left as a hub id."""
        from tuner.paths import looks_local

        candidate = Path(value).expanduser()
        try:
            if not candidate.is_absolute() and ((self.base_dir / candidate).exists() or looks_local(str(value))):
                return str((self.base_dir / candidate).resolve())
        except (OSError, ValueError):
            pass  # a name no file system takes: `tuner.paths.check_path_text` says so, naming the option
        return str(value)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"plugins": list(self.plugins), "model_family": self.model_family}
        for name, model in self.sections.items():
            out[name] = model.model_dump(mode="json", exclude_none=True)
        return out


# A config is a few kB; TOML's parser is quadratic in the parts of a dotted key (100,000 parts
# take minutes), so both are bounded before parsing.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_KEY_PARTS = 32
_STRINGS = re.compile(r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'')
_NOT_KEY = re.compile(r"[^\w.\t -]+")  # what cannot sit inside a dotted key once strings are gone


def _long_dotted_key(text: str) -> int | None:
    """The line of a dotted key of more than `MAX_KEY_PARTS` parts (quoted parts count too), or ``None``.

    Linear in the text: no backtracking regular expression over what a user wrote.
    """
    bare = _STRINGS.sub(lambda m: "s" + "\n" * m.group().count("\n"), text)
    for number, line in enumerate(bare.split("\n"), 1):
        for piece in _NOT_KEY.split(line):
            if piece.count(".") >= MAX_KEY_PARTS:
                run = 0
                for part in piece.split("."):
                    word = part.strip(" \t")
                    run = run + 1 if word and " " not in word and "\t" not in word else (1 if word else 0)
                    if run > MAX_KEY_PARTS:
                        return number
    return None


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a ``.toml`` or ``.json`` config file into a dict."""
    from tuner.jsonfile import decode_text, loads, regular_file_problem

    if path.is_dir() or not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.suffix.lower() not in (".json", ".toml"):
        raise ConfigError(f"config file {path} must end in .toml or .json")
    problem, raw = regular_file_problem(path, limit=MAX_CONFIG_BYTES)
    if raw is None:
        raise ConfigError(f"config file {problem}")
    try:
        text = decode_text(raw, path, error=ConfigError)
        if path.suffix.lower() == ".json":
            data = loads(text)
        else:
            line = _long_dotted_key(text)
            if line is not None:
                raise ConfigError(f"{path}: line {line} has a dotted key of more than {MAX_KEY_PARTS} parts")
            data = tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    except ValueError as exc:  # a JSON key twice (TOML refuses that itself)
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table/object")
    return data


def _parse_value(text: str) -> Any:
    if text in ("", "null"):
        return None  # --set x= or x=null switches an option off (a quoted '' is an empty text)
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string: --set wan.model_flavour=t2v


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["train.learning_rate=1e-4", "seed=1"]`` -> nested dict (values read as TOML; an empty value or
    ``null`` is ``None``: the option switched off)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.learning_rate=1e-4), got '{item}'")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: '{part}' is both a value and a section")
        node[parts[-1]] = _parse_value(value.strip())
    return out


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``over`` into a copy of ``base``."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _format_error(section: str, model: type[BaseModel], exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = shown(".".join(str(p) for p in err["loc"]))
        where = f"{section}.{loc}" if loc else section
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{where}'{did_you_mean(str(err['loc'][-1]), model.model_fields)}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            # A whole-section rule has the section as its input: not worth echoing.
            value = err.get("input")
            given = str(value) if isinstance(value, Path) else repr(value)
            # A message that already names the value (a missing file) does not repeat it.
            got = f" (got {given})" if loc and str(value) not in msg else ""
            parts.append(f"{where}: {msg}{got}")
    more = len(exc.errors()) - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _resolve_paths(model: BaseModel, section: str, rule: PathRule) -> None:
    from tuner.paths import check_path_text

    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, Path):
            check_path_text(f"{section}.{name}", value)
        if isinstance(value, Path) and not value.is_absolute() and "Path" in str(info.annotation):
            resolved = rule.resolve(value)
            try:
                # Assigning validates the field again: file checks see the real path.
                setattr(model, name, resolved)
            except ValidationError as exc:
                raise ConfigError(_format_error(section, type(model), exc) + rule.hint(value, resolved)) from None


def resolve_config(
    raw: Mapping[str, Any],
    host: PluginHost,
    base_dir: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    rule: PathRule | None = None,
    environment: bool = True,
) -> RunConfig:
    """Validate ``raw`` (and ``overrides`` on top of it) against the sections the active plugins registered.

    ``environment=False`` skips the checks of this machine (an installed package a tracker needs), for
    ``tuner config import``, which converts a config written for another machine. A section validator
    reads it as ``info.context["environment"]``.

    Each side may write an option flat or in its section: ``--set train.max_train_steps=2`` overrides
    a file's flat ``max_train_steps`` and ``--set max_train_steps=2`` a ``[train]`` entry. Relative
    paths are read from ``rule.base`` (`tuner.config_paths.path_rule_for` picks it for a file), else
    from ``base_dir`` (default: the current directory).
    """
    rule = rule or PathRule((base_dir or Path.cwd()).resolve())
    nested = _nested(raw, overrides, host)
    check_top_level(nested)
    return _validated(nested, host, rule, environment)


def load_run_config(
    path: Path,
    plugins: list[str] | None,
    sets: list[str] | None,
    environment: bool = True,
    *,
    host: PluginHost | None = None,
    installed: PluginHost | None = None,
) -> tuple[PluginHost, RunConfig]:
    """The one load of a command: read the file, apply ``--set``, activate plugins, validate (``environment``:
    this machine's packages too). The caller hands the host and the config down; nothing loads them again.

    Hosts the caller built already are used rather than built again (``tuner demo`` wrote the config with
    one): ``host`` where it has exactly the plugins the config names, ``installed`` as `every_installed`.
    """
    from tuner.config_keys import every_installed, unread_environment
    from tuner.config_paths import path_rule_for
    from tuner.plugin_discovery import BUILTIN_PLUGINS
    from tuner.plugins import PluginHost
    from tuner.progress import notice, say

    raw, overrides = read_config_file(path), parse_overrides(sets or [])
    combined = merge(raw, overrides)
    check_top_level(combined)
    names = [*(plugins or []), *combined.get("plugins", [])]
    every = installed or every_installed()  # once: the plugins keys imply, the environment variables none reads
    implied = implied_plugins(combined, names, every)
    wanted = [*names, *implied]
    if host is None or set(host.active) != {*dict(BUILTIN_PLUGINS), *wanted}:
        host = PluginHost.build(wanted)
    for plugin, key in implied.items():
        say(f"plugin '{plugin}' switched on: the config sets its option '{key}'")
    for line in unread_environment(host, every):
        notice(line)
    rule = path_rule_for(path, raw, host.sections)  # a flat config.json reads paths from here, as SimpleTuner does
    nested = _nested(raw, overrides, host, every)
    check_names(nested)  # the text was checked above, before any plugin loaded; '--plugins' spellings land here
    return host, _validated(nested, host, rule, environment)


def _nested(
    raw: Mapping[str, Any], overrides: Mapping[str, Any] | None, host: PluginHost, every: PluginHost | None = None
) -> dict[str, Any]:
    """Every option in its section, ``overrides`` taking precedence however either side writes it."""
    nested = nest_flat_keys(raw, host.sections, every)
    return merge(nested, nest_flat_keys(overrides, host.sections, every)) if overrides else nested


def _validated(nested: Mapping[str, Any], host: PluginHost, rule: PathRule, environment: bool) -> RunConfig:
    sections: dict[str, BaseModel] = {}
    for name, model in host.sections.items():
        values = blank_paths_unset(model, nested.get(name, {}))
        check_unset(name, model, values)
        try:
            sections[name] = model.model_validate(values, context={"environment": environment})
        except ValidationError as exc:
            raise ConfigError(_format_error(name, model, exc)) from None
        _resolve_paths(sections[name], name, rule)
        check_numbers(name, sections[name])
    if "validation" in sections and "evaluation" in sections:
        from tuner.validate.settings import check_held_out_dataset

        check_held_out_dataset(sections["validation"], sections["evaluation"])  # type: ignore[arg-type]
    family = host.resolve_family(nested.get("model_family"))
    return RunConfig(
        plugins=host.active,
        model_family=family,
        sections=sections,
        base_dir=rule.base,
        path_rule=rule,
        data_backends=dict(host.data_backends),
    )


def config_schema(host: PluginHost) -> dict[str, Any]:
    """A JSON Schema of the whole config (for editors), built from the active sections."""
    properties: dict[str, Any] = {
        "plugins": {"type": "array", "items": {"type": "string"}, "description": "Plugins to activate."},
        "model_family": {"type": "string", "enum": sorted(host.families), "description": "Model family to train."},
    }
    defs: dict[str, Any] = {}
    for name, model in host.sections.items():
        schema = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        properties[name] = schema
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "tuner config",
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "$defs": defs,
    }

"""How config keys are named: flat keys moved into their sections, other spellings, unknown keys.

The Wan guide writes every option at the top level, some as command-line flags (``"--user_prompt_library"``)
and some in a second spelling; each is mapped to its one name here. A key no active section has is
refused naming what is missing: the plugin that offers it (installed or not), or the nearest name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from tuner.errors import ConfigError, did_you_mean, shown

if TYPE_CHECKING:
    from tuner.plugins import PluginHost

__all__ = [
    "TOP_LEVEL_KEYS",
    "NOT_OFFERED",
    "nest_flat_keys",
    "implied_plugins",
    "every_installed",
    "unread_environment",
    "other_spellings",
]

TOP_LEVEL_KEYS = ("plugins", "model_family")


def other_spellings(sections: Mapping[str, type[BaseModel]]) -> dict[str, str]:
    """Spellings an option also accepts -> its name: a field's ``validation_alias=AliasChoices(name, ...)``."""
    from pydantic import AliasChoices

    out: dict[str, str] = {}
    for model in sections.values():
        for name, info in model.model_fields.items():
            if isinstance(info.validation_alias, AliasChoices):
                out.update({a: name for a in info.validation_alias.choices if isinstance(a, str) and a != name})
    return out


def _canonical(key: str, spellings: Mapping[str, str]) -> str:
    # The guide writes command-line flags as keys ("--user_prompt_library"): the dashes are no part of the name.
    bare = key[2:] if key.startswith("--") and len(key) > 2 else key
    return spellings.get(bare, bare)


def _canonical_table(table: Mapping[str, Any], where: str, spellings: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = _canonical(key, spellings)
        if name in out:
            raise ConfigError(f"'{name}' is set twice in {where} (as '{key}' too): keep one")
        out[name] = value
    return out


def nest_flat_keys(
    raw: Mapping[str, Any], sections: Mapping[str, type[BaseModel]], every: PluginHost | None = None
) -> dict[str, Any]:
    """``raw`` with each flat option moved into its section; a key no section has is refused naming its
    plugin among ``every`` installed one (`every_installed`, built here only when not given)."""
    owner = {name: section for section, model in sections.items() for name in model.model_fields}
    spellings = other_spellings(sections)
    flat = _canonical_table(raw, "the config", spellings)
    out: dict[str, Any] = {}
    # Tables first, so a flat key that repeats a table entry is caught either way round.
    for key, value in sorted(flat.items(), key=lambda kv: kv[0] not in sections):
        if key in TOP_LEVEL_KEYS:
            out[key] = value
        elif key in sections:
            if not isinstance(value, Mapping):
                raise ConfigError(f"'{key}' is a section and must be a table, got {value!r}")
            out.setdefault(key, {}).update(_canonical_table(value, f"[{key}]", spellings))
        elif key in owner:
            table = out.setdefault(owner[key], {})
            if key in table:
                raise ConfigError(f"'{key}' is set both at the top level and in [{owner[key]}]")
            table[key] = value
        else:
            raise ConfigError(_unknown_key(key, [*TOP_LEVEL_KEYS, *sections, *owner], every))
    return out


# Options of the guide tuner does not offer, and why: refused by name rather than as typos.
# (Empty since validation_preview, the last of them, is offered.)
NOT_OFFERED: dict[str, str] = {}


def _unknown_key(key: str, known: list[str], every: PluginHost | None) -> str:
    if key in NOT_OFFERED:
        return f"config key '{key}' is not supported: {NOT_OFFERED[key]}"
    owners = _option_owners(every or every_installed())
    owner = owners.get(key)
    if owner is not None:
        return (
            f"config key '{key}' is an option of the '{owner}' plugin, which is not enabled: enable it"
            f" (plugins = [..., \"{owner}\"] or --plugin {owner})"
        )
    from tuner.plugin_discovery import BUILTIN_PLUGINS

    # A key named after a plugin ("crepa_...", or its section's name) is that plugin's, installed or not.
    prefix = key.split("_", 1)[0] if "_" in key.strip("_") else ""
    plugins = set(owners.values())
    named = prefix if prefix in plugins else owners.get(prefix, "")
    if named and named not in dict(BUILTIN_PLUGINS):  # the core's own sections ("train_...") are no plugin's
        options = [name for name, plugin in owners.items() if plugin == named]
        return f"config key '{shown(key)}' is not an option of the '{named}' plugin{did_you_mean(key, options)}"
    hint = did_you_mean(key, known)
    if not hint:
        # A key's first word is no plugin's name ("scheduled_...", "is_..."): name none rather than invent one.
        return f"unknown config key '{shown(key)}': no installed plugin offers it"
    return f"unknown config key '{shown(key)}'{hint}"


def every_installed() -> PluginHost | None:
    """A host with every installed plugin active: where a key or an environment variable finds its plugin.

    ``None`` when one fails to load: a broken third-party plugin must not hide the user's own mistake.
    A config load builds it once and hands it to `implied_plugins` and `unread_environment`.
    """
    from tuner.plugins import PluginHost

    try:
        return PluginHost.build(all_installed=True)
    except Exception:  # noqa: BLE001 - see above
        return None


def _option_owners(every: PluginHost | None) -> dict[str, str]:
    """Option and section name (and the options' other spellings) -> the installed plugin that registers it."""
    if every is None:
        return {}
    owners = {}
    for section, model in every.sections.items():
        for name in (section, *model.model_fields):
            owners[name] = every.section_owner[section]
    for spelling, name in other_spellings(every.sections).items():
        owners[spelling] = owners[name]
    return owners


def _family_of(every: PluginHost, name: str, plugins: set[str]) -> bool:
    """Whether ``model_family = name`` means a family of ``plugins`` (by its name or an alias it declared)."""
    family = name if name in every.families else every.family_aliases.get(name)
    return family is not None and every.families.get(family) in plugins


def implied_plugins(raw: Mapping[str, Any], names: Iterable[str], every: PluginHost | None) -> dict[str, str]:
    """Installed plugins that ``raw`` uses beyond the core's and ``names``: plugin -> the first key of it found.

    A config written for the guide sets the options of several features at the top level; naming
    those options is enough to switch their plugins on. ``every`` is `every_installed` (``None``: none implied).
    """
    from tuner.plugin_discovery import BUILTIN_PLUGINS

    if every is None:
        return {}
    named = {*dict(BUILTIN_PLUGINS), *names}
    sections = {s: m for s, m in every.sections.items() if every.section_owner[s] in named}
    spellings = other_spellings(sections)
    active = {name for section, model in sections.items() for name in (section, *model.model_fields)}
    keys = [_canonical(key, spellings) for key in raw]
    unknown = [key for key in keys if key not in TOP_LEVEL_KEYS and key not in active]
    implied: dict[str, str] = {}
    family = raw.get("model_family")
    if isinstance(family, str) and family and not _family_of(every, family, named):
        owner = every.family_named(family)  # the family plugin that answers to this name switches itself on
        if owner is not None:
            implied[every.families[owner]] = "model_family"
    if not unknown:
        return implied
    owners = _option_owners(every)
    for key in unknown:
        if key in owners:
            implied.setdefault(owners[key], key)
    return implied


def unread_environment(host: PluginHost, every: PluginHost | None) -> list[str]:
    """A line per environment variable that an installed plugin reads while ``host`` lacks that plugin.

    A section model lists the variables its plugin reads in ``environment_variables`` (fnmatch patterns,
    e.g. ``"*_FEED_FORWARD_CHUNK_SIZE"``); set for a plugin that is not enabled, they do nothing.
    ``every`` is `every_installed` (``None``: no line).
    """
    import fnmatch
    import os

    if every is None:
        return []
    lines = []
    for section, model in every.sections.items():
        plugin = every.section_owner[section]
        if plugin in host.active:
            continue
        for pattern in getattr(model, "environment_variables", ()):
            for name in sorted(fnmatch.filter(os.environ, pattern)):
                if os.environ[name].strip():
                    lines.append(
                        f"{name} is set, but the '{plugin}' plugin that reads it is not enabled: it has no effect"
                        f" (enable it: plugins = [..., \"{plugin}\"])"
                    )
    return lines

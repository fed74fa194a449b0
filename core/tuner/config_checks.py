"""The checks a config passes besides its section models.

Top-level names, text a file name or a log line can hold, numbers torch and JSON readers take,
options switched off that can be off. `tuner.config` runs them while it validates.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from tuner.errors import ConfigError, shown

__all__ = ["MAX_INT", "blank_paths_unset", "check_unset", "check_top_level", "check_names", "check_numbers"]


def blank_paths_unset(model: type[BaseModel], values: Mapping[str, Any]) -> Mapping[str, Any]:
    """An empty string given to an optional path (``"webhook_config": ""``) unsets it, as it reads."""
    blank = [
        name
        for name, info in model.model_fields.items()
        if values.get(name) == "" and "Path" in str(info.annotation) and "None" in str(info.annotation)
    ]
    return {**values, **dict.fromkeys(blank)} if blank else values


def check_unset(section: str, model: type[BaseModel], values: Mapping[str, Any]) -> None:
    """An option switched off (``--set x=``, ``x=null``, JSON ``null``) must be one that can be off."""
    from pydantic import TypeAdapter

    for name, value in values.items():
        info = model.model_fields.get(name)
        if value is not None or info is None:
            continue
        try:
            TypeAdapter(info.annotation).validate_python(None)
        except ValidationError:
            default = info.get_default(call_default_factory=True)
            given = "[]" if isinstance(default, list) else json.dumps(default, default=str)
            raise ConfigError(
                f"{section}.{name} cannot be switched off (unset/null): it always takes a value; give one"
                f" (its default is {given})"
            ) from None


def check_top_level(raw: Mapping[str, Any]) -> None:
    """``plugins`` is a list of names and ``model_family`` a name; every text can be written to a file."""
    check_names(raw)
    _check_text(raw, "")


def check_names(raw: Mapping[str, Any]) -> None:
    plugins = raw.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) and p for p in plugins):
        raise ConfigError(f"'plugins' must be a list of plugin names such as [\"wan\"], got {plugins!r}")
    family = raw.get("model_family")
    if family is not None and (not isinstance(family, str) or not family):
        raise ConfigError(f"'model_family' must be the name of a model family such as \"wan\", got {family!r}")


def _check_text(value: Any, where: str) -> None:
    # A NUL or a lone surrogate passes validation and fails later, in a file name or a log line.
    from tuner.paths import text_problem

    if isinstance(value, str):
        problem = text_problem(value)
        if problem is not None:
            raise ConfigError(f"{shown(where) or 'config'}: the value {problem}: remove it")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            name = f"{where}.{key}" if where else str(key)
            problem = text_problem(str(key))
            if problem is not None:
                raise ConfigError(f"config key {ascii(name)} {problem}: remove it")
            _check_text(item, name)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_text(item, f"{where}[{i}]")


# Python's integers have no limit, but torch's seeds, C timers and JSON readers do: beyond 2**53 a
# number is a typo, and it would pass `config show` to crash deep in training.
MAX_INT = 2**53


def check_numbers(name: str, section: BaseModel) -> None:
    """Every whole number of a section (also inside lists) lies within ±`MAX_INT`, every float is finite."""
    import math

    def check(where: str, value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, int) and abs(value) > MAX_INT:
            raise ConfigError(f"{where} = {str(value)[:30]} is out of range: use a number from -2**53 to 2**53")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where} = {value} is not a finite number")
        if isinstance(value, (list, tuple)):
            for item in value:
                check(where, item)
        elif isinstance(value, dict):
            for key, item in value.items():
                check(f"{where}.{key}", item)
        elif isinstance(value, BaseModel):
            for key in type(value).model_fields:
                check(f"{where}.{key}", getattr(value, key))

    for key in type(section).model_fields:
        check(f"{name}.{key}", getattr(section, key))

"""Random damage to a valid config, for property tests of the config loader.

`config_mutations` is a hypothesis strategy: it takes a complete config (every
option of every installed plugin) and drops keys, swaps types, puts in extreme and
non-finite numbers, odd unicode (NUL, lone surrogates, right-to-left marks), deep
nesting and unknown keys, and moves options between the top level and their
sections. `load_config_text` writes the result the way a user would (JSON or
TOML) and loads it exactly as ``tuner train`` does. The property: the loader
accepts the config or raises a `tuner.errors.TunerError`, never anything else.

Used by ``tests/core/test_config_fuzz.py`` (a bounded, seeded run) and
``bench/fuzz_config.py`` (10,000 examples). Needs ``hypothesis`` (the ``test`` extra).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = ["base_config", "config_mutations", "load_config_text", "write_config", "entry_points_read_once"]

# Numbers at the edges: of int64, of float64, of sense (0, -1), and not numbers at all.
EXTREME_NUMBERS: tuple[Any, ...] = (
    0, -1, 1, 2**31, 2**63 - 1, 2**63, -(2**63), 2**64, 10**30, -(10**30),
    0.0, -0.0, 1e-320, 5e-324, 1e308, -1e308, 1.7976931348623157e308,
    float("inf"), float("-inf"), float("nan"), True, False,
)  # fmt: skip
# Text that has broken programs before.
ODD_TEXT: tuple[str, ...] = (
    "", " ", "\x00", "a\x00b", "\udc80", "x\ud800y", "\u202eevil", "e\u0301", "\U0001f600", "\ufeff", "\n\r\t",
    "../../etc/passwd", "/dev/zero", "~", "C:\\Windows", "x" * 300, "é" * 200, "nan", "inf", "1e999", "null",
    "{}", "[]", "true", "latest", "none", "%s%n", "${HOME}", "'", '"',
)  # fmt: skip


@contextmanager
def entry_points_read_once() -> Iterator[None]:
    """Read the installed plugins' entry points once for the duration, not on every load.

    Scanning the installed distributions takes most of a config load's time (tens of milliseconds);
    the plugins cannot change during a fuzz run, so thousands of loads share one scan.
    """
    import tuner.plugin_discovery as discovery

    real = discovery.installed_plugins
    found = real()
    discovery.installed_plugins = lambda: dict(found)
    try:
        yield
    finally:
        discovery.installed_plugins = real


def base_config(folder: Path) -> dict[str, Any]:
    """A valid config naming every installed plugin, with every option written out (paths inside ``folder``)."""
    from tuner.config import resolve_config
    from tuner.plugins import PluginHost

    host = PluginHost.build(all_installed=True)
    family = sorted(host.families)[0]
    raw = {"plugins": host.active, "model_family": family, "data": {"instance_data_dir": str(folder / "clips")}}
    resolved = resolve_config(raw, host, base_dir=folder)
    out: dict[str, Any] = {"plugins": host.active, "model_family": family}
    for name, section in resolved.sections.items():
        table = section.model_dump(mode="json", exclude_defaults=True)
        # Every default written out too, where writing it keeps the section valid (some options
        # only apply when another is on, and say so when set).
        for option, value in section.model_dump(mode="json", exclude_none=True).items():
            try:
                type(section).model_validate({**table, option: value})
            except ValueError:
                continue
            table[option] = value
        out[name] = table
    return out


def _option_names() -> list[str]:
    from tuner.plugins import PluginHost

    host = PluginHost.build(all_installed=True)
    return sorted({name for model in host.sections.values() for name in model.model_fields} | set(host.sections))


def config_mutations(base: dict[str, Any], max_mutations: int = 6) -> SearchStrategy[tuple[dict[str, Any], list[str]]]:
    """``(config, --set items)``: ``base`` with one to ``max_mutations`` kinds of damage, and a few overrides."""
    from hypothesis import strategies as st

    names = _option_names()
    keys = st.one_of(st.sampled_from(names), st.text(max_size=12), st.sampled_from(names).map(lambda n: n[:-1]))
    numbers = st.one_of(
        st.sampled_from(EXTREME_NUMBERS), st.integers(), st.floats(allow_nan=True, allow_infinity=True)
    )
    texts = st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=40))
    leaves = st.one_of(st.none(), st.booleans(), numbers, texts)
    values = st.recursive(
        leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=8
    )

    def slots(node: Any) -> list[tuple[Any, Any]]:
        """Every (container, key) in ``node``, depth first: the places a mutation can hit."""
        found: list[tuple[Any, Any]] = []
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in list(items):
            found.append((node, key))
            found.extend(slots(value))
        return found

    @st.composite
    def mutated(draw: Any) -> tuple[dict[str, Any], list[str]]:
        config = copy.deepcopy(base)
        for _ in range(draw(st.integers(1, max_mutations))):
            places = slots(config)
            kind = draw(st.sampled_from(["drop", "swap", "number", "text", "nest", "unknown", "flat", "duplicate"]))
            sections = [k for k, v in config.items() if isinstance(v, dict)]
            if kind in ("flat", "duplicate") and sections:
                section = config[draw(st.sampled_from(sections))]
                if section:
                    name = draw(st.sampled_from(sorted(section, key=str)))
                    # flat moves an option to the top level (valid); duplicate writes it in both places.
                    config[name] = section[name] if kind == "duplicate" else section.pop(name)
                continue
            if kind == "unknown":
                target = config[draw(st.sampled_from(sections))] if sections and draw(st.booleans()) else config
                target[draw(keys)] = draw(values)
                continue
            if not places:
                config[draw(keys)] = draw(values)
                continue
            parent, key = draw(st.sampled_from(places))
            if kind == "drop":
                del parent[key]
            elif kind == "swap":
                parent[key] = draw(values)
            elif kind == "number":
                parent[key] = draw(numbers)
            elif kind == "text":
                parent[key] = draw(texts)
            else:  # nest: the value buried in lists and tables
                value = parent[key]
                for _ in range(draw(st.integers(1, 40))):
                    value = [value] if draw(st.booleans()) else {draw(keys): value}
                parent[key] = value
        sets = draw(st.lists(st.builds(lambda k, v: f"{k}={v}", keys, texts | numbers.map(str)), max_size=2))
        return config, sets

    return mutated()


def write_config(folder: Path, config: dict[str, Any], as_toml: bool) -> Path:
    """Write ``config`` as a user would: TOML when asked and TOML can hold it, else JSON."""
    if as_toml:
        import tomlkit

        try:
            text = tomlkit.dumps(config)
        except (TypeError, ValueError):  # None, or keys TOML cannot write: a user would have written JSON
            pass
        else:
            path = folder / "config.toml"
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
            return path
    path = folder / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")  # ASCII: lone surrogates travel as \\udc80 escapes
    return path


def load_config_text(path: Path, sets: list[str]) -> Any:
    """Load ``path`` with ``--set`` items exactly as ``tuner train`` does; returns the resolved config."""
    from tuner.config import load_run_config

    return load_run_config(path, None, sets)[1]

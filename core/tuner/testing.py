"""Test fixtures for tuner and for outside plugin authors.

Use from a ``conftest.py``::

    pytest_plugins = ["tuner.testing"]

and take the fixtures: ``tiny_model_dir(family)`` writes a family's tiny model
once per session; ``make_run(...)`` lays out a complete run folder (tiny model,
synthetic clips, config) and returns the config path; ``cli(...)`` runs the
``tuner`` command in-process and returns exit code and output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tuner.config import merge, parse_overrides

if TYPE_CHECKING:
    from tuner.plugins import PluginHost

__all__ = ["CliResult", "run_cli", "write_run_folder", "run_output_dir", "step_losses", "tuner_plugin", "tiny_model_dir", "make_run", "cli"]


@dataclass
class CliResult:
    exit_code: int
    output: str
    stderr: str


def run_cli(args: list[str]) -> CliResult:
    """Run ``tuner ARGS`` in this process (exceptions that are not user errors propagate)."""
    from typer.testing import CliRunner

    from tuner.cli import app

    result = CliRunner().invoke(app, args, catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def write_run_folder(
    folder: Path,
    model_dir: Path,
    *,
    plugin: str,
    family: str | None = None,
    steps: int = 20,
    clips: int = 2,
    overrides: list[str] | None = None,
    variant: str | None = None,
    host: PluginHost | None = None,
) -> Path:
    """A run folder using the tiny model at ``model_dir``: clips/ (stills for an image family), config.toml.

    Returns the config path. ``host`` writes the tiny model when it is missing
    (default: a host with the installed plugin ``plugin``; pass one to use a
    plugin registered directly).
    """
    import tomlkit

    from tuner.demo import demo_config, prepare_tiny_model, write_demo_media
    from tuner.plugins import PluginHost

    family = family or plugin
    folder.mkdir(parents=True, exist_ok=True)
    model_overrides = prepare_tiny_model(host or PluginHost.build([plugin]), family, model_dir, variant=variant)
    paths = write_demo_media(folder / "clips", clips, model_overrides)
    config = demo_config(family, plugin, paths[0].with_suffix(".txt").read_text().strip(), model_overrides, steps)
    config = merge(config, parse_overrides(overrides or []))
    path = folder / "config.toml"
    path.write_text(tomlkit.dumps(config))
    return path


def run_output_dir(config: Path) -> Path:
    """The ``output_dir`` a run folder's config names (a relative one read from the config's folder)."""
    from tuner.config import read_config_file

    return config.parent / read_config_file(config)["train"]["output_dir"]


def step_losses(output_dir: Path) -> list[float]:
    """The loss of every step the run logged into ``output_dir``, in order."""
    from tuner.report.jsonlog import read_log

    return [r["loss"] for r in read_log(output_dir) if r["event"] == "step"]


@pytest.fixture(scope="session")
def tuner_plugin() -> str:
    """The family plugin `make_run` uses: the only one installed, unless a conftest overrides this fixture."""
    from tuner.plugins import PluginHost

    host = PluginHost.build(all_installed=True)
    owners = sorted(set(host.families.values()))
    if len(owners) != 1:
        pytest.fail(f"several family plugins are installed ({', '.join(owners)}): override the tuner_plugin fixture")
    return owners[0]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny_model_dir(plugin, variant=None, real_width_blocks=None)`` -> a folder with that family's tiny model.

    Written once per session. ``real_width_blocks=N`` writes the model at its real layer widths with
    ``N`` blocks instead (the true-width tests; see the `write_tiny_model` hook).
    """
    from tuner.demo import prepare_tiny_model
    from tuner.plugins import PluginHost

    made: dict[tuple[str, str | None, int | None], Path] = {}

    def get(plugin: str, variant: str | None = None, real_width_blocks: int | None = None) -> Path:
        key = (plugin, variant, real_width_blocks)
        if key not in made:
            host = PluginHost.build([plugin])
            width = f"-wide{real_width_blocks}" if real_width_blocks is not None else ""
            folder = tmp_path_factory.mktemp(f"tiny-{plugin}-{variant or 'default'}{width}") / "model"
            prepare_tiny_model(host, host.resolve_family(None), folder, variant=variant, real_width_blocks=real_width_blocks)
            made[key] = folder
        return made[key]

    return get


@pytest.fixture
def make_run(tmp_path: Path, tiny_model_dir: Callable[[str], Path], tuner_plugin: str) -> Callable[..., Path]:
    """``make_run(steps=20, overrides=[...], name="run", variant=None)`` -> config path of a ready run folder."""

    def make(*, plugin: str | None = None, name: str = "run", variant: str | None = None, **kwargs: Any) -> Path:
        plugin = plugin or tuner_plugin
        model = tiny_model_dir(plugin, variant)
        return write_run_folder(tmp_path / name, model, plugin=plugin, variant=variant, **kwargs)

    return make


@pytest.fixture
def cli() -> Iterator[Callable[[list[str]], CliResult]]:
    """``cli(["train", "--config", ...])`` -> `CliResult`."""
    yield run_cli

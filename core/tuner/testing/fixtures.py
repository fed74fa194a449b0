"""pytest fixtures for tuner and for outside plugin authors.

Use from a ``conftest.py``::

    pytest_plugins = ["tuner.testing.fixtures"]

and take the fixtures: ``tiny_model_dir(family)`` writes a family's tiny model
once per session; ``make_run(...)`` lays out a complete run folder (tiny model,
synthetic clips, config) and returns the config path; ``cli(...)`` runs the
``tuner`` command in-process and returns exit code and output.
``toy_installed`` installs the toy family as an entry point for one test (this
process and the processes it starts), and ``toy_run(...)`` lays out a run of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tuner.testing.runs import CliResult, run_cli, write_run_folder, write_toy_dist, write_toy_run

__all__ = ["tuner_plugin", "tiny_model_dir", "make_run", "cli", "toy_installed", "toy_run"]


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


@pytest.fixture(scope="session")
def _toy_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dist(tmp_path_factory.mktemp("toy-site"))


@pytest.fixture
def toy_installed(_toy_site: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The toy family installed for this test as a third party installs a plugin: entry point ``toy``.

    Its dist-info lies in a folder put on ``sys.path`` and on ``PYTHONPATH``, so
    ``tuner`` run in this process or in a process the test starts finds it
    (plugin autoload is switched on for both). Returns that folder.
    """
    from tuner.plugin_discovery import DISABLE_AUTOLOAD_ENV

    monkeypatch.syspath_prepend(str(_toy_site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(_toy_site), os.environ.get("PYTHONPATH")])))
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    return _toy_site


@pytest.fixture
def toy_run(tmp_path: Path, toy_installed: Path) -> Callable[..., Path]:
    """``toy_run(steps=20, overrides=[...], name="run", clips=2)`` -> config path of a toy run folder (installs the toy family)."""

    def make(*, name: str = "run", **kwargs: Any) -> Path:
        return write_toy_run(tmp_path / name, **kwargs)

    return make

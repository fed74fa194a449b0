"""Runs for tests: a run folder on a family's tiny model, the ``tuner`` command in-process, what a run logged.

`write_run_folder` lays out a complete run (tiny model, synthetic clips,
config) and returns the config path; `write_toy_run` the same for the toy
family, which `write_toy_dist` installs as an entry point; `run_cli` runs ``tuner ARGS`` in this
process; `run_output_dir` and `step_losses` read what a run wrote. The
fixtures in `tuner.testing.fixtures` are built on these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.config import merge, parse_overrides

if TYPE_CHECKING:
    from tuner.plugins import PluginHost

__all__ = ["CliResult", "run_cli", "write_run_folder", "write_toy_dist", "write_toy_run", "run_output_dir", "step_losses"]


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


def write_toy_dist(site: Path) -> Path:
    """Install the toy family into ``site`` as a package installs a plugin: a dist-info with entry point ``toy``.

    A folder on ``sys.path`` (or ``PYTHONPATH``) holding it makes ``toy`` an
    installed plugin, found and loaded through entry points like any other.
    Returns ``site``.
    """
    dist = site / "tuner_toy-0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tuner-toy\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[tuner.plugins]\ntoy = tuner.testing.toy:ToyFamily\n")
    return site


def write_toy_run(folder: Path, *, steps: int = 20, clips: int = 2, overrides: list[str] | None = None) -> Path:
    """A toy-family run folder: clips/ (3 frames of 16x16), config.toml with ``plugins = ["toy"]``.

    Paths in the config are relative to its folder (out/, cache/, clips/).
    Returns the config path; the toy family must be installed to run it (`write_toy_dist`).
    """
    import tomlkit

    from tuner.data.synthetic import write_synthetic_clips
    from tuner.testing.toy import toy_config

    folder.mkdir(parents=True, exist_ok=True)
    write_synthetic_clips(folder / "clips", count=clips, num_frames=3, width=16, height=16)
    config = merge({"plugins": ["toy"], **toy_config(Path(), max_train_steps=steps)}, parse_overrides(overrides or []))
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

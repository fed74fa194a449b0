"""The docs say what the code does."""

from __future__ import annotations

from pathlib import Path

from tuner.config_docs import options_markdown
from tuner.plugins import PluginHost

ROOT = Path(__file__).resolve().parents[2]


def in_tree_plugins() -> list[str]:
    """The installed plugins whose code lives in this repository's plugins/ (not third-party ones)."""
    import importlib.util

    from tuner.plugin_discovery import installed_plugins

    names = []
    for name, ep in installed_plugins().items():
        spec = importlib.util.find_spec(ep.module.partition(".")[0])
        origin = Path(spec.origin).resolve() if spec and spec.origin else None
        if origin is not None and origin.is_relative_to(ROOT / "plugins"):
            names.append(name)
    return sorted(names)


def test_options_reference_is_current():
    names = in_tree_plugins()
    assert "wan" in names
    generated = options_markdown(PluginHost.build(names))
    committed = (ROOT / "docs" / "options.md").read_text()
    command = " ".join(f"--plugin {n}" for n in names)
    assert committed == generated, f"run: tuner config docs {command} > docs/options.md"


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = [line for line in ci.splitlines() if line.strip() and not line.startswith("#") and "set -" not in line]
    assert len(command) == 1 and command[0].strip() in readme


def _command_paths() -> list[str]:
    """Every command of ``tuner``, as typed: ``train``, ``config import``, ``lora info``, ..."""
    import typer.main

    from tuner.cli import app

    group = typer.main.get_group(app)
    paths = []
    for name, command in group.commands.items():
        subcommands = getattr(command, "commands", None)
        paths += [f"{name} {sub}" for sub in subcommands] if subcommands else [name]
    return paths


def test_readme_command_table_lists_every_command():
    readme = (ROOT / "README.md").read_text()
    table = [line for line in readme.splitlines() if line.startswith("| `tuner ")]
    for path in _command_paths():
        assert any(f"tuner {path}" in line for line in table), f"README's command table lacks `tuner {path}`"


def test_config_help_lists_its_commands():
    from tuner.testing.runs import run_cli

    result = run_cli(["config", "--help"])
    for name in ("show", "schema", "docs", "import"):
        assert name in result.output

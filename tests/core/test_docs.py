"""The docs say what the code does."""

from __future__ import annotations

from pathlib import Path

from tuner.config_docs import options_markdown
from tuner.plugins import PluginHost

ROOT = Path(__file__).resolve().parents[2]


def test_options_reference_is_current():
    generated = options_markdown(PluginHost.build(["wan"]))
    committed = (ROOT / "docs" / "options.md").read_text()
    assert committed == generated, "run: tuner config docs --plugin wan > docs/options.md"


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = [line for line in ci.splitlines() if line.strip() and not line.startswith("#") and "set -" not in line]
    assert len(command) == 1 and command[0].strip() in readme

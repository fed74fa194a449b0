"""A built wheel, installed on its own, finds its plugins through entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_install_finds_the_plugins(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("tuner-*.whl")
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import tuner, tuner_wan; print(tuner.__file__); print(tuner_wan.__file__)"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout.split()
    assert all(Path(p).is_relative_to(target) for p in where), "imports come from the wheel, not the checkout"
    listed = subprocess.run(
        [sys.executable, "-m", "tuner.cli", "plugins", "--json"], capture_output=True, text=True, env=env, check=True
    )
    wan = {i["name"]: i for i in json.loads(listed.stdout)}["wan"]
    assert wan["source"] == "tuner_wan.plugin" and "load_model" in wan["hooks"]
    assert (target / "tuner" / "py.typed").is_file() and (target / "tuner_wan" / "py.typed").is_file()
    # The testing kit ships: outside families test themselves with it.
    kit = target / "tuner" / "testing"
    assert all((kit / f"{name}.py").is_file() for name in ("__init__", "contract", "fixtures", "runs", "tiny", "toy", "toy_model", "config_fuzz"))
    # tuner serve works offline: its script, chart library (with its licence) and style ship in the wheel.
    static = target / "tuner" / "serve" / "static"
    assert all((static / name).is_file() for name in ("serve.js", "serve.css", "uPlot.iife.min.js", "uPlot.LICENSE"))

"""The README's two commands on a machine with no virtual environment active, as a newcomer runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _readme_command(word: str) -> str:
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("bash scripts/setup.sh")]
    [line] = [line for line in lines if word in line]
    return line


def _bare_environment() -> dict[str, str]:
    """This process's environment less any active venv or conda environment (and their bin folders on PATH)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONHOME", "PYTHONPATH")}
    active = [os.environ[k] for k in ("VIRTUAL_ENV", "CONDA_PREFIX") if os.environ.get(k)]
    path = [p for p in env["PATH"].split(os.pathsep) if not any(p.startswith(a) for a in active) and "/.venv/" not in p + "/"]
    env["PATH"] = os.pathsep.join(path)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.mark.skipif(shutil.which("git") is None, reason="copies the checkout with git ls-files")
def test_readme_setup_makes_a_venv_and_the_demo_runs_in_it(tmp_path):
    env = _bare_environment()
    python = shutil.which("python3", path=env["PATH"])
    assert python is not None
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    repo = tmp_path / "tuner"
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    command = _readme_command("tuner demo") + " --steps 1 --dir d && python3 -c 'import tuner; print(tuner.__file__)'"
    result = subprocess.run(["bash", "-c", command], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "setup: making a virtual environment in .venv" in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith(str(repo / "core" / "tuner")), "tuner comes from the copy"
    assert (repo / "d" / "output" / "pytorch_lora_weights.safetensors").is_file()
    assert (repo / ".venv" / "bin" / "tuner").is_file(), "installed into .venv, not into the system Python"

"""The LTX-Video family published from outside: `examples/tuner-ltx` built, installed and used like a PyPI package.

Wheels of tuner and of the example are installed into a fresh virtual
environment that also sees this interpreter's libraries (so torch and diffusers
are not reinstalled; the venv's own tuner wheel comes first on the path). Everything below runs
in that environment's interpreter: ``tuner plugins``, ``tuner demo --plugin
ltx``, the LoRA loaded in `LTXPipeline`, and the package's own tests, which
run tuner's contract kit on the installed family.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.plugin_discovery import DISABLE_AUTOLOAD_ENV

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tuner-ltx"

pytestmark = pytest.mark.slow


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: int = 600) -> str:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh venv holding the two wheels; returns its python and a clean environment."""
    base = tmp_path_factory.mktemp("ltx-venv")
    env = {k: v for k, v in os.environ.items() if k not in (DISABLE_AUTOLOAD_ENV, "PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    _run([sys.executable, "-m", "venv", "--without-pip", str(base / "venv")], env, base)
    python = base / "venv" / "bin" / "python"
    # The libraries of this interpreter (torch, diffusers, pip, ...) after the venv's own site-packages, in
    # whichever venv or base they live: a venv's --system-site-packages would reach the base install only.
    venv_site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], env, base).strip())
    outer = [p for p in sys.path if Path(p).name == "site-packages" and Path(p).is_dir()]
    (venv_site / "outer-libraries.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in outer))
    for source in (ROOT, EXAMPLE):  # --no-build-isolation: the installed hatchling, nothing downloaded
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(base / "dist"),
              str(source)], env, base)
    wheels = sorted(str(p) for p in (base / "dist").glob("*.whl"))
    assert [Path(w).name.split("-")[0] for w in wheels] == ["tuner", "tuner_ltx"], wheels
    # pip from the system site-packages, installing into the venv (its sys.prefix).
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", *wheels], env, base)
    return python, env


def test_both_packages_import_from_the_venv(venv: tuple[Path, dict[str, str]], tmp_path: Path):
    python, env = venv
    where = _run([str(python), "-c", "import tuner, tuner_ltx; print(tuner.__file__); print(tuner_ltx.__file__)"],
                 env, tmp_path).split()
    site = python.parent.parent
    assert all(Path(p).is_relative_to(site) for p in where), f"imported from outside the venv: {where}"


def test_tuner_plugins_lists_ltx_with_its_family(venv: tuple[Path, dict[str, str]], tmp_path: Path):
    python, env = venv
    infos = {p["name"]: p for p in json.loads(_run([str(python.parent / "tuner"), "plugins", "--json"], env, tmp_path))}
    ltx = infos["ltx"]
    assert ltx["version"] == "0.1.0" and ltx["source"] == "tuner_ltx.plugin"
    assert ltx["families"] == ["ltx"] and ltx["sections"] == ["ltx"]
    assert {"load_model", "encode_batch", "encode_prompts", "compute_loss", "validate", "export_adapter",
            "write_tiny_model"} <= set(ltx["hooks"])
    assert infos["wan"]["families"] == ["wan"], "tuner's own families stay listed beside it"


_RENDER = """
import sys, numpy as np, torch
from diffusers import LTXPipeline
model, adapter = sys.argv[1], sys.argv[2]
pipe = LTXPipeline.from_pretrained(model)
pipe.set_progress_bar_config(disable=True)
def render():
    return pipe("a red square moving right", height=64, width=64, num_frames=9, num_inference_steps=4,
                generator=torch.Generator().manual_seed(0), output_type="np", max_sequence_length=32).frames[0]
before = render()
pipe.load_lora_weights(adapter)
after = render()
print(before.shape, float(np.abs(after - before).mean()))
"""


def test_tuner_demo_trains_ltx_and_the_lora_loads_in_ltx_pipeline(venv: tuple[Path, dict[str, str]], tmp_path: Path):
    python, env = venv
    # The console script the wheel installed, as a user types it.
    out = _run([str(python.parent / "tuner"), "demo", "--plugin", "ltx", "--dir", str(tmp_path / "demo"), "--steps", "20"],
               env, tmp_path)
    output = tmp_path / "demo" / "output"
    adapter = output / "pytorch_lora_weights.safetensors"
    assert adapter.is_file() and str(adapter) in out
    assert sorted(p.parent.name for p in (output / "validation").glob("step-*/main.mp4")) == ["step-10", "step-20"]
    shape, change = _run([str(python), "-c", _RENDER, str(tmp_path / "demo" / "model"), str(adapter)],
                         env, tmp_path).rsplit(" ", 1)
    assert shape == "(9, 64, 64, 3)" and float(change) > 1e-4, "the LoRA loaded in LTXPipeline changes nothing"


def test_the_package_passes_its_own_tests_when_installed(venv: tuple[Path, dict[str, str]], tmp_path: Path):
    # Its tests run tuner's contract kit on the family, through the installed entry point.
    python, env = venv
    out = _run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")], env, tmp_path)
    assert " passed" in out and "failed" not in out and "skipped" not in out, out[-2000:]

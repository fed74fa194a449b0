"""The testing kit (`tuner.testing`) stays out of what runs: ``import tuner``, the CLI and a training run.

Each probe runs ``tuner`` in a fresh process and prints, as it exits, which modules of the kit, of
hypothesis (an optional test dependency) and of pytest that process imported.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import tuner.testing

_PROBE = """
import atexit, json, sys

def report():
    tools = ("tuner.testing", "hypothesis", "pytest", "_pytest")
    found = sorted(m for m in sys.modules if any(m == t or m.startswith(t + ".") for t in tools))
    print("KIT " + json.dumps(found))

atexit.register(report)
if len(sys.argv) > 1:
    from tuner.cli import main
    sys.argv = ["tuner", *sys.argv[1:]]
    main()
else:
    import tuner, tuner.cli
"""


def _imported(*args: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("KIT ")]
    return json.loads(line[4:])


def test_importing_tuner_and_its_cli_loads_no_testing_kit():
    assert _imported() == []


@pytest.mark.slow
def test_the_demo_takes_only_the_tiny_builders_and_a_training_run_nothing(tmp_path: Path):
    demo = tmp_path / "demo"
    # The demo writes the family's tiny model: the one path that needs the kit (its tiny-model parts).
    assert _imported("demo", "--plugin", "wan", "--dir", str(demo), "--steps", "2", "--prepare-only") == [
        "tuner.testing",
        "tuner.testing.tiny",
    ]
    overrides = ["train.max_train_steps=2", "validation.validation_num_inference_steps=2"]
    sets = [arg for o in overrides for arg in ("--set", o)]
    assert _imported("train", "--config", str(demo / "config.toml"), *sets) == []
    assert (demo / "output" / "pytorch_lora_weights.safetensors").is_file()


def test_every_module_of_the_kit_is_named_and_imports_what_it_lists():
    folder = Path(tuner.testing.__file__).parent
    assert sorted(tuner.testing.__all__) == sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
    for name in tuner.testing.__all__:
        module = importlib.import_module(f"tuner.testing.{name}")
        assert module.__all__ and all(hasattr(module, attr) for attr in module.__all__), name

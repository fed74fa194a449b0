import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

if find_spec("tuner_ltx") is None:  # not installed: test the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

pytest_plugins = ["tuner.testing.fixtures"]


@pytest.fixture(scope="session")
def tuner_plugin() -> str:
    # tuner's own families (wan) are installed too: make_run and tiny_model_dir use ours.
    return "ltx"

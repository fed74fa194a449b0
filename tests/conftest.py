import pytest

pytest_plugins = ["tuner.testing"]


@pytest.fixture(scope="session")
def tuner_plugin() -> str:
    # The CLI and end-to-end tests run on the tiny Wan model.
    return "wan"

"""A command loads its config once: read, checked and validated once, one plugin host built, both handed down."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

import tuner.config
from tuner.plugins import PluginHost
from tuner.train.settings import TrainSection


@pytest.fixture
def toy_config_path(toy_run) -> Path:
    """A toy run (the toy family installed as a third party installs a plugin) without validation."""
    return toy_run(steps=2, overrides=["validation.validation_disable=true"])


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """Counts of the real functions a load runs, each still doing its work."""
    counts: collections.Counter[str] = collections.Counter()

    def count(owner: object, name: str, key: str) -> None:
        real = getattr(owner, name)

        def counted(*args: object, **kwargs: object) -> object:
            counts[key] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, staticmethod(counted) if isinstance(owner, type) else counted)

    count(tuner.config, "read_config_file", "read")
    count(tuner.config, "check_top_level", "checked")
    count(TrainSection, "model_validate", "validated")
    build = PluginHost.build

    def counted_build(names=(), extra=None, *, all_installed=False):  # type: ignore[no-untyped-def]
        counts["every installed plugin's host" if all_installed else "run host"] += 1
        return build(names, extra, all_installed=all_installed)

    monkeypatch.setattr(PluginHost, "build", staticmethod(counted_build))
    return counts


@pytest.mark.parametrize("command", [["train"], ["cache"], ["data", "preview"], ["config", "show"]])
def test_a_command_loads_its_config_once_and_builds_one_host(toy_config_path, calls, cli, command):
    # A flat option of an installed plugin switches it on: the one place the host was built twice.
    result = cli([*command, "--config", str(toy_config_path), "--set", "crepa_enabled=false", "--set", "seed=3"])
    assert result.exit_code == 0, result.output + result.stderr
    assert "plugin 'crepa' switched on: the config sets its option 'crepa_enabled'" in result.stderr
    assert dict(calls) == {"read": 1, "checked": 1, "validated": 1, "run host": 1, "every installed plugin's host": 1}
    if command == ["train"]:
        assert "done" in result.output and (toy_config_path.parent / "out" / "pytorch_lora_weights.safetensors").is_file()


def test_a_refused_key_is_named_from_the_same_host_of_every_installed_plugin(toy_config_path, calls, cli):
    result = cli(["train", "--config", str(toy_config_path), "--set", "lerning_rate=1e-3"])
    assert result.exit_code == 2
    assert result.stderr.strip().endswith("error: unknown config key 'lerning_rate' (did you mean 'learning_rate'?)")
    assert dict(calls) == {"read": 1, "checked": 1, "run host": 1, "every installed plugin's host": 1}

"""Config options typed as flags after the config: --learning_rate 1e-4, --seed=3 (SimpleTuner's habit)."""

from __future__ import annotations

import tomllib

from tuner.testing.runs import run_cli


def _config(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('plugins = ["toy"]\n[train]\nlearning_rate = 1e-4\n')
    return str(path)


def test_key_value_flags_after_the_config_set_options_like_set(tmp_path, toy_installed):
    result = run_cli(["config", "show", "--config", _config(tmp_path), "--learning_rate", "5e-5", "--seed=3",
                      "--use_ema", "--train.lora_rank", "8", "--set", "train.lora_dropout=0.1"])
    assert result.exit_code == 0, result.stderr
    train = tomllib.loads(result.output)["train"]
    assert (train["learning_rate"], train["seed"], train["use_ema"], train["lora_rank"], train["lora_dropout"]) == (
        5e-5, 3, True, 8, 0.1)


def test_a_mistyped_flag_or_a_stray_word_is_one_line(tmp_path, toy_installed):
    result = run_cli(["config", "show", "--config", _config(tmp_path), "--learning_rat", "5e-5"])
    assert result.exit_code == 2 and "did you mean 'learning_rate'" in result.stderr
    result = run_cli(["train", "--config", _config(tmp_path), "oops"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: unexpected argument 'oops': options after the config are --KEY VALUE or --KEY=VALUE (e.g. --learning_rate 1e-4)")


def test_train_help_says_so():
    out = " ".join(run_cli(["train", "--help"]).output.split())
    assert "--KEY VALUE or --KEY=VALUE" in out and "--learning_rate 1e-4" in out


def test_model_family_alone_switches_its_plugin_on(tmp_path, toy_installed):
    path = tmp_path / "config.json"
    path.write_text('{"model_family": "toy", "learning_rate": 5e-5}')  # SimpleTuner's switch, no plugins list
    result = run_cli(["config", "show", "--config", str(path)])
    assert result.exit_code == 0, result.stderr
    assert "plugin 'toy' switched on" in result.stderr and 'model_family = "toy"' in result.output


def test_a_family_answers_to_the_aliases_it_declares():
    from typing import Any

    from tuner import hookimpl
    from tuner.plugins import PluginHost

    class Aliased:
        @hookimpl
        def register_model_families(self, register: Any) -> None:
            register("toyvideo", "a toy", aliases=("toy-video", "tv"))

    host = PluginHost.build([], extra={"aliased": Aliased()})
    assert host.resolve_family("tv") == "toyvideo" and host.family_named("toy-video") == "toyvideo"
    assert host.family_named("wan") is None


def test_plot_takes_option_flags_too(tmp_path, toy_installed):
    out = tmp_path / "lr.png"
    result = run_cli(["plot", "lr", "--config", _config(tmp_path), "--max_train_steps", "10", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes().startswith(b"\x89PNG")

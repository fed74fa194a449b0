"""Bad input ends with one readable 'error:' line and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest


def _tuner(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuner.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    # Information may come first (a plugin switched on); the error is one line, the last.
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], proc.stderr
    return lines[-1]


def _train_with(config, overrides: list[str]) -> str:
    args = ["train", "--config", str(config)]
    for item in overrides:
        args += ["--set", item]
    return _one_error_line(_tuner(*args))


# The core's own checks, on a run of the toy family installed as a third party installs a plugin.
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.learnin_rate=1e-4"], "unknown key 'train.learnin_rate' (did you mean 'learning_rate'?)"),
        (["learnig_rate=1e-4"], "unknown config key 'learnig_rate' (did you mean 'learning_rate'?)"),
        (["train.learning_rate='fast'"], "train.learning_rate: Input should be a valid number"),
        (["train.max_train_steps=-1"], "train.max_train_steps: Input should be greater than or equal to 0"),
        (["train.max_train_steps=0"], "train: set max_train_steps or num_train_epochs (both are 0"),
        (["optimizer='bnb-lion8bit-paged'"], "optimizer 'bnb-lion8bit-paged' needs bitsandbytes on a CUDA GPU"),
        (["lora_type='lycoris'"], "lora_type 'lycoris' needs lycoris_config"),
        (["data.instance_data_dir='nowhere'"], "data.instance_data_dir does not exist or is not a folder"),
        (["validation.validation_resolution='832by480'"], "expected WIDTHxHEIGHT"),
        (["crepa_blok_index=8"], "'crepa_blok_index' is not an option of the 'crepa' plugin (did you mean 'crepa_block_index'?)"),
        (["validation_guidance_skip_layers_start="], "validation.validation_guidance_skip_layers_start cannot be switched off"),
        (["data.resolution_type='pixels'"], "data.resolution_type: Input should be 'pixel', 'area' or 'pixel_area'"),
        (["data_backend_config='datasets.json'"], "set either data_backend_config (a backend file) or instance_data_dir"),
        (["plugins=['toyy']"], "unknown plugin 'toyy' (did you mean 'toy'?); installed plugins:"),
        (["plugins=['ltx2']"], "unknown plugin 'ltx2': it is not installed (install the package that provides it);"),
        (["validation_preview=true", "validation_preview_steps=99"], "validation_preview_steps = 99 is above validation_num_inference_steps"),
        (["model_type='full'"], "train.model_type: Input should be 'lora'"),
        (["disable_benchmark=true", "validation_on_startup=true"], "disable_benchmark = true contradicts validation_on_startup"),
    ],
)
def test_bad_config_exits_with_one_readable_line(toy_run, overrides, expected):
    assert expected in _train_with(toy_run(steps=1), overrides)


# A plugin's own one-line errors, on the tiny Wan: Wan's flavours, TREAD's routes against Wan's blocks.
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["wan.model_flavour='t2v-9b'"], "wan.model_flavour: 't2v-9b' is not a flavour of the installed Wan plugin"),
        (["wan.model_flavour='t2v-14b-2.5'"], "'t2v-14b-2.5' names Wan 2.5, which the installed Wan plugin does not"
                                              " support (it trains Wan 2.1 and 2.2): Wan 2.5 support is not installed"),
        (["wan.model_flavour='s2v-14b-2.2'"], "'s2v-14b-2.2': s2v models are not supported by the installed Wan plugin"),
        (["wan.model_flavour='i2v-a14b-2.2-high'"], "(did you mean 'i2v-14b-2.2-high'?)"),
        (["tread_config={routes=[{selection_ratio=0.5,start_layer_idx=0,end_layer_idx=9}]}"], "end_layer_idx = 9 is outside this model's 2 blocks"),
    ],
)
def test_a_plugins_bad_option_exits_with_one_readable_line(make_run, overrides, expected):
    assert expected in _train_with(make_run(steps=1), overrides)


def test_unknown_plugin_on_the_command_line_lists_installed_ones(tmp_path, toy_installed):
    config = tmp_path / "c.toml"
    config.write_text("")
    line = _one_error_line(_tuner("train", "--plugin", "nope", "--config", str(config)))
    assert "unknown plugin 'nope'" in line and "toy" in line


def test_missing_config_file_and_broken_toml(tmp_path):
    assert "config file not found" in _one_error_line(_tuner("train", "--config", str(tmp_path / "x.toml")))
    broken = tmp_path / "b.toml"
    broken.write_text("[train\nseed = 1")
    assert "invalid TOML" in _one_error_line(_tuner("train", "--config", str(broken)))


def test_missing_data_dir_setting(tmp_path, toy_installed):
    config = tmp_path / "c.toml"
    config.write_text('plugins = ["toy"]\n')
    assert "data.instance_data_dir is not set" in _one_error_line(_tuner("train", "--config", str(config)))


def test_help_does_not_import_torch_and_answers_fast():
    code = "import sys, tuner.cli; assert 'torch' not in sys.modules and 'diffusers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    start = time.perf_counter()
    proc = _tuner("--help")
    assert proc.returncode == 0 and "train" in proc.stdout
    # Generous bound for a loaded CI machine; locally it is ~0.3 s.
    assert time.perf_counter() - start < 5

"""examples/configs/: each ready-made config loads and validates, its memory options are the ones the estimate of
`tuner configure` picks for its card, and it trains on the tiny model with only what a CPU needs changed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tuner.config import read_config_file, resolve_config
from tuner.data.synthetic import write_synthetic_clips, write_synthetic_image
from tuner.plugins import PluginHost

CONFIGS = Path(__file__).parents[2] / "examples" / "configs"
HIGH = "i2v-14b-2.2-high"
# config file -> (accelerator GiB the file is written for, frames the estimate is taken at)
CARDS = {
    "wan21-t2v-1.3b-24gb.toml": 24,
    "wan22-i2v-a14b-24gb.toml": 24,
    "wan22-i2v-a14b-48gb.toml": 48,
    "wan22-i2v-a14b-80gb.toml": 80,
}


def test_every_example_config_is_listed():
    assert sorted(p.name for p in CONFIGS.glob("*.toml")) == sorted(CARDS)


@pytest.mark.parametrize("name", sorted(CARDS))
def test_an_example_config_validates_and_holds_the_memory_option_the_estimate_picks(name, tmp_path):
    from tuner.setup.estimate import estimate, workload
    from tuner.setup.wizard import default_memory, memory_options
    from tuner_wan.profile import wan_profile

    write_synthetic_image(tmp_path / "datasets" / "first-frame.png", 32, 32, caption=False)  # what the files name
    (tmp_path / "datasets" / "my-clips").mkdir()
    raw = read_config_file(CONFIGS / name)
    host = PluginHost.build(raw["plugins"])
    config = resolve_config(raw, host, base_dir=tmp_path)
    profile = wan_profile()
    flavour = profile.flavour(config.section("wan").model_flavour)
    shape = profile.shape(flavour.transformer_config)
    work = workload(profile, flavour, config.data.num_frames, 480, 480, config.train.lora_rank)
    every = PluginHost.build(["wan", "quantize", "offload"])  # the options configure offers with these plugins
    rows = [(o, estimate(shape, work, precision=o.precision, checkpointing=o.checkpointing, offload=o.offload))
            for o in memory_options(every, accelerator=True)]
    picked, fits = default_memory(rows, CARDS[name])
    assert fits
    option = next(o for o, _ in rows if o.name == picked)
    for key, value in option.settings.items():
        section, _, field = key.partition(".")
        assert getattr(config.section(section) if section not in ("train", "data") else getattr(config, section),
                       field) == value, f"{name}: {key} should be {value} ({picked})"
    unset = {"quantize": "base_model_precision", "offload": "enable_group_offload"}
    for section, field in unset.items():  # nothing heavier than the pick
        if not any(k.startswith(f"{section}.{field}") for k in option.settings) and section in host.sections:
            assert getattr(config.section(section), field) in ("no_change", False), f"{name}: {section}.{field}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CARDS))
def test_an_example_config_trains_on_the_tiny_model(name, tmp_path, tiny_model_dir, cli):
    """Changed for a CPU, each by --set: the tiny model, 5-frame 32-pixel clips, one step, a 1-step validation."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(CONFIGS / name, root / name)
    write_synthetic_clips(root / "datasets" / "my-clips", count=2, num_frames=5, width=32, height=32)
    write_synthetic_image(root / "datasets" / "first-frame.png", 32, 32, caption=False)
    i2v = "i2v" in name
    model = tiny_model_dir("wan", HIGH) if i2v else tiny_model_dir("wan")
    substitutions = [
        f"wan.pretrained_model_name_or_path={model}",
        "data.num_frames=5",
        "data.resolution=32",
        "train.max_train_steps=1",
        "validation.validation_step_interval=1",
        "validation.validation_num_inference_steps=1",
        "validation.validation_num_video_frames=5",
        "validation.validation_resolution=32x32",
    ]
    args = ["train", "--config", str(root / name)]
    for item in substitutions:
        args += ["--set", item]
    result = cli(args)
    assert result.exit_code == 0, result.stderr
    output = root / "output" / name.removesuffix(".toml").replace("wan22-i2v-a14b", "wan22-i2v").replace("wan21-t2v-1.3b-24gb", "wan21-1.3b")
    adapters = sorted(p.name for p in output.glob("*.safetensors"))
    assert len(adapters) == (2 if i2v else 1), adapters  # both experts: one file each
    assert (output / "validation" / "step-1").is_dir()

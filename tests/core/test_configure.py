"""`tuner configure`: the wizard driven by scripted answers writes a config that trains the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from tuner.cli import app
from tuner.config import read_config_file
from tuner.data.synthetic import write_synthetic_clips
from tuner.demo import prepare_tiny_model
from tuner.plugins import PluginHost
from tuner.setup.estimate import Workload, estimate
from tuner.setup.wizard import steps_for


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    write_synthetic_clips(tmp_path / "clips", count=3, num_frames=17, width=64, height=64)
    return tmp_path / "clips"


@pytest.fixture
def tiny_sets(tiny_model_dir) -> list[str]:
    """The tiny model's own config entries (its path, its short text encoder) as --set arguments."""
    model = tiny_model_dir("wan")
    overrides = prepare_tiny_model(PluginHost.build(["wan"]), "wan", model)
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def _configure(args: list[str], answers: str | None = None):
    return CliRunner().invoke(app, ["configure", *args], input=answers, catch_exceptions=False)


@pytest.mark.slow
def test_interactive_answers_write_a_config_that_trains_the_tiny_model(tmp_path, clips, tiny_sets, tiny_model_dir, cli):
    out = tmp_path / "run" / "config.toml"
    out.parent.mkdir()
    answers = "\n".join(
        [
            "wan",  # family (two are installed)
            "",  # flavour: the default
            str(tiny_model_dir("wan")),  # weights
            "",  # adapter: lora
            "8",  # rank
            "10",  # frames: refused (not 4k+1) ...
            "9",  # ... and asked again
            "",  # resolution: the data's 64
            "",  # buckets
            "3",  # steps
            "1",  # validation prompts
            "",  # accelerator memory
            "",  # TFLOP/s
            "",  # memory option: the fastest that fits
            "",  # mixed precision
        ]
    ) + "\n"
    result = _configure(
        [str(clips), "--out", str(out), *tiny_sets, "--set", "validation.validation_num_inference_steps=2"], answers
    )
    assert result.exit_code == 0, result.output
    assert "10 is not 4k+1: try 9" in result.output, "a refused answer says why and is asked again"
    assert "the adapter's capacity" in result.output, "each question shows its why"
    config = read_config_file(out)
    assert config["train"]["lora_rank"] == 8 and config["train"]["max_train_steps"] == 3
    assert config["data"]["num_frames"] == 9 and config["data"]["resolution"] == 64
    backend = json.loads((out.parent / "datasets.json").read_text())
    assert backend[0]["video"] == {"num_frames": 9, "bucket_strategy": "aspect_ratio"}
    assert len(json.loads((out.parent / "prompts.json").read_text())) == 1

    trained = cli(["train", "--config", str(out)])
    assert trained.exit_code == 0, trained.output + trained.stderr
    adapter = load_file(out.parent / "output" / "pytorch_lora_weights.safetensors")
    assert any("lora" in key for key in adapter), "the run wrote a LoRA"


def test_yes_takes_the_defaults_and_flags_override_them(tmp_path, clips, tiny_sets):
    out = tmp_path / "config.toml"
    result = _configure([str(clips), "--yes", "-p", "wan", "--out", str(out), "--rank", "4", "-a", "adapter=lycoris", *tiny_sets])
    assert result.exit_code == 0, result.output
    config = read_config_file(out)
    assert config["train"]["lora_rank"] == 4 and config["train"]["lora_type"] == "lycoris"
    assert json.loads((tmp_path / "lycoris_config.json").read_text())["algo"] == "lokr"
    assert config["data"]["num_frames"] == 17, "the clips' length, within the family's 4k+1 rule"
    assert config["train"]["max_train_steps"] == steps_for(3) == 500
    assert config["wan"]["model_flavour"] == "t2v-480p-1.3b-2.1", "the family's default flavour"
    assert config["train"]["mixed_precision"] == "bf16", "what the estimate counts, even when the wizard runs on a CPU"
    assert "# the adapter's capacity (asked)" in out.read_text(), "entries carry their why as a comment"


def test_bad_answers_are_one_line_errors(tmp_path, clips):
    result = _configure([str(clips), "--yes", "-p", "wan", "--out", str(tmp_path / "c.toml"), "--frames", "16"])
    assert result.exit_code == 2 and "--answer frames=16: 16 is not 4k+1: try 13" in result.output
    result = _configure([str(clips), "--yes", "-p", "wan", "--out", str(tmp_path / "c.toml"), "-a", "colour=red"])
    assert result.exit_code == 2 and "--answer names no question: colour" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _configure([str(empty), "--yes", "-p", "wan", "--out", str(tmp_path / "c.toml")])
    assert result.exit_code == 2 and "error: " in result.output and "looked for .avi" in result.output


def test_memory_options_trade_memory_for_time_on_a_real_model():
    """Wan 1.3B, 81 frames at 832x480: checkpointing saves most of the activations and costs a forward;
    int8 halves the weights; the wizard's default is the fastest option that fits."""
    profile = PluginHost.build(["wan"]).describe_family("wan")
    flavour = profile.flavours[0]
    shape = profile.shape(flavour.transformer_config)
    work = Workload(tokens=profile.tokens(flavour, 81, 480, 832), text_tokens=512, rank=16)
    plain = estimate(shape, work, checkpointing=False)
    ckpt = estimate(shape, work, checkpointing=True)
    int8 = estimate(shape, work, checkpointing=True, precision="int8-quanto")
    assert work.tokens == 21 * 30 * 52
    assert ckpt.activations < plain.activations / 5 and ckpt.flops == pytest.approx(plain.flops * 4 / 3, rel=0.1)
    # int8 packs the blocks' weights; the embeddings and output layers stay bf16.
    outside = shape.parameters - shape.block_parameters
    assert int8.weights == outside * 2 + shape.block_parameters and int8.total < ckpt.total
    assert 2.5 < ckpt.weights / 2**30 < 3.0, "1.42e9 bf16 weights"


def test_the_default_memory_option_is_the_fastest_that_fits_else_the_smallest():
    from tuner.setup.wizard import default_memory, memory_options

    profile = PluginHost.build(["wan"]).describe_family("wan")
    flavour = profile.flavours[0]
    shape = profile.shape(flavour.transformer_config)
    work = Workload(tokens=profile.tokens(flavour, 81, 480, 832), text_tokens=512, rank=16)
    options = memory_options(PluginHost.build(all_installed=True))
    names = [o.name for o in options]
    assert names[:3] == ["bf16", "bf16+checkpointing", "int8+checkpointing"] and "bf16+checkpointing+offload" in names
    assert "int8+checkpointing+offload" not in names, "offloading refuses a quantized base: never offered"
    rows = [(o, estimate(shape, work, precision=o.precision, checkpointing=o.checkpointing, offload=o.offload)) for o in options]
    assert default_memory(rows, 200.0) == ("bf16", True), "everything fits: no checkpointing is fastest"
    assert default_memory(rows, 24.0) == ("bf16+checkpointing", True)
    assert default_memory(rows, 4.0) == ("bf16+checkpointing+offload", False), "nothing fits: the smallest"
    by_name = {o.name: e for o, e in rows}
    offloaded, resident = by_name["bf16+checkpointing+offload"], by_name["bf16+checkpointing"]
    assert offloaded.weights < resident.weights / 10 and offloaded.seconds > resident.seconds


def test_an_offload_answer_writes_the_plugins_options_and_loads(tmp_path, clips, tiny_sets):
    out = tmp_path / "config.toml"
    result = _configure([str(clips), "--yes", "-p", "wan", "--out", str(out), "--memory", "bf16+checkpointing+offload", *tiny_sets])
    assert result.exit_code == 0, result.output
    config = read_config_file(out)
    assert config["offload"]["enable_group_offload"] is True and "quantize" not in config
    assert config["train"]["gradient_checkpointing"] is True and "offload" in config["plugins"]


def test_stills_suggest_an_image_family_whose_questions_skip_frames(tmp_path):
    from tuner.data.synthetic import write_synthetic_image

    for i in range(2):
        write_synthetic_image(tmp_path / "stills" / f"s{i}.png", 64, 64, index=i)
    out = tmp_path / "config.toml"
    result = _configure([str(tmp_path / "stills"), "--yes", "--out", str(out), "--model", "some/flux-model"])
    assert result.exit_code == 0, result.output
    assert "frames per sample" not in result.output
    config = read_config_file(out)
    assert config["model_family"] == "flux" and config["data"]["num_frames"] == 1
    assert json.loads((tmp_path / "datasets.json").read_text())[0]["dataset_type"] == "image"


# Every flavour of each installed family -> the flavour whose tiny model it shares (the tiny model's shape
# depends on the task, the version and the experts only, not on the real model's size or resolution).
_TINY_TWIN = {"t2v-480p-14b-2.1": "t2v-480p-1.3b-2.1", "i2v-14b-2.1-720p": "i2v-14b-2.1",
              "i2v-14b-2.2-low": "i2v-14b-2.2-high", "t2v-14b-2.2-low": "t2v-14b-2.2-high"}


def _every_flavour() -> list[tuple[str, str]]:
    host = PluginHost.build(["wan", "flux"])
    return [(plugin, f.name) for plugin in ("wan", "flux") for f in host.describe_family(plugin).flavours]


@pytest.mark.slow
@pytest.mark.parametrize("flavour", _every_flavour(), ids=lambda f: f"{f[0]}-{f[1]}")
def test_the_wizards_config_for_every_flavour_trains_the_tiny_model(tmp_path, tiny_model_dir, cli, flavour):
    """Image-to-video flavours get a first frame per prompt in the library they write: the config trains."""
    from tuner.data.synthetic import write_synthetic_image

    plugin, name = flavour
    twin = _TINY_TWIN.get(name, name)
    if plugin == "flux":
        for i in range(2):
            write_synthetic_image(tmp_path / "data" / f"s{i}.png", 32, 32, index=i)
    else:
        write_synthetic_clips(tmp_path / "data", count=2, num_frames=5, width=32, height=32)
    model = tiny_model_dir(plugin, twin)
    overrides = prepare_tiny_model(PluginHost.build([plugin]), plugin, model, variant=twin)
    # The tiny model's own first frame is no part of what a user has: the wizard must give its own.
    mine = ("validation.validation_image", f"{plugin}.model_flavour", f"{plugin}.flux_model_flavour")
    sets = [a for k, v in overrides.items() if k not in mine for a in ("--set", f"{k}={json.dumps(v)}")]
    out = tmp_path / "run" / "config.toml"
    out.parent.mkdir()
    args = [str(tmp_path / "data"), "--yes", "-p", plugin, "--flavour", name, "--out", str(out), "--steps", "1",
            "--resolution", "32", "-a", "prompts=1", *sets, "--set", "validation.validation_num_inference_steps=1"]
    if plugin == "wan":
        args += ["--frames", "5"]
    result = _configure(args)
    assert result.exit_code == 0, result.output
    config = read_config_file(out)
    assert "validation_image" not in config.get("validation", {})
    library = json.loads((out.parent / "prompts.json").read_text())
    if name.startswith(("i2v", "flf2v", "ti2v")):
        entry = library["caption_0"]
        assert (out.parent / entry["image"]).is_file(), "each prompt carries its clip's first frame"
    else:
        assert isinstance(library["caption_0"], str)
    trained = cli(["train", "--config", str(out)])
    assert trained.exit_code == 0, trained.output + trained.stderr
    assert list((out.parent / "output" / "validation").rglob("caption_0.*")), "validation rendered the prompt"

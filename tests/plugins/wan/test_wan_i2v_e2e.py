"""Image-to-video Wan end to end on the tiny models, through the CLI: train, validate, load in diffusers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tuner.config import read_config_file
from tuner.report.jsonlog import read_log
from tuner.testing.runs import run_output_dir


@pytest.mark.parametrize("flavour", ["i2v-14b-2.1", "ti2v-5b-2.2"])
def test_image_to_video_trains_validates_and_its_lora_changes_the_diffusers_pipeline(
    make_run, cli, tiny_model_dir, flavour
):
    from diffusers import WanImageToVideoPipeline
    from PIL import Image

    overrides = ["validation.validation_step_interval=0", "evaluation.eval_split=0.5", "evaluation.eval_steps_interval=2"]
    config = make_run(steps=4, variant=flavour, overrides=overrides)
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    out = run_output_dir(config)
    steps = [r for r in read_log(out) if r["event"] == "step"]
    assert len(steps) == 4 and np.isfinite([r["loss"] for r in steps]).all()
    evaluated = [r["eval_loss"] for r in steps if "eval_loss" in r]
    assert len(evaluated) == 2 and np.isfinite(evaluated).all()
    sheet = Image.open(out / "validation" / "step-4" / "contact-sheet.png")
    assert sheet.width > 0 and (out / "validation" / "step-4" / "main.mp4").is_file()

    model = tiny_model_dir("wan", flavour)
    pipe = WanImageToVideoPipeline.from_pretrained(str(model))
    pipe.set_progress_bar_config(disable=True)
    image = Image.open(model / "first-frame.png")
    tokens = pipe.tokenizer(["a red square"], padding="max_length", max_length=32, return_tensors="pt")
    with torch.no_grad():
        embeds = pipe.text_encoder(tokens.input_ids, tokens.attention_mask).last_hidden_state

    def render():
        return pipe(
            image=image, prompt_embeds=embeds, height=64, width=64, num_frames=5, num_inference_steps=2,
            guidance_scale=1.0, generator=torch.Generator().manual_seed(0), output_type="np",
        ).frames[0]  # fmt: skip

    before = render()
    pipe.load_lora_weights(str(out), weight_name="pytorch_lora_weights.safetensors")
    after = render()
    # The adapter moves every generated frame (the tiny TI2V VAE keeps differences small); TI2V's first
    # frame is the given image, which no adapter changes.
    generated = slice(1, None) if flavour.startswith("ti2v") else slice(None)
    assert np.abs(after[generated] - before[generated]).mean() > 2e-5
    if flavour.startswith("ti2v"):
        assert np.abs(after[0] - before[0]).max() < 1e-5


def test_image_to_video_without_first_frames_stops_at_start_up_naming_both_options(make_run, cli):
    config = make_run(steps=2, variant="i2v-14b-2.1", overrides=["validation.validation_image=''"])
    result = cli(["train", "--config", str(config)])
    assert result.exit_code != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "validation_image" in message and "validation_using_datasets" in message and "eval_dataset_id" in message
    assert not (run_output_dir(config) / "checkpoint-1").exists()


def test_validation_first_frames_from_a_dataset_and_the_prompt_library(make_run, cli, tmp_path):
    from tuner.data.synthetic import write_synthetic_clips

    folder = tmp_path / "run"
    config = make_run(steps=1, variant="i2v-14b-2.1")
    write_synthetic_clips(folder / "firsts", count=2, num_frames=17, width=64, height=64)
    backend = [
        {"id": "clips", "type": "local", "dataset_type": "video", "instance_data_dir": "clips", "video": {"num_frames": 17}},
        {"id": "firsts", "type": "local", "dataset_type": "video", "instance_data_dir": "firsts"},
    ]  # fmt: skip
    (folder / "backend.json").write_text(json.dumps(backend))
    import tomlkit

    raw = read_config_file(config)
    del raw["data"]["instance_data_dir"]  # the backend file names the clips instead
    config.write_text(tomlkit.dumps(raw))
    library = {"own": {"prompt": "a blue circle", "image": "own.png"}, "other": "a green square"}
    from PIL import Image

    Image.new("RGB", (80, 48), (0, 0, 255)).save(folder / "own.png")
    (folder / "library.json").write_text(json.dumps(library))
    result = cli([
        "train", "--config", str(config), "--set", "data.data_backend_config=backend.json",
        "--set", "validation.validation_image=''",
        "--set", "validation.validation_using_datasets=true", "--set", "evaluation.eval_dataset_id=firsts",
        "--set", "validation.user_prompt_library=library.json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    step = run_output_dir(config) / "validation" / "step-1"
    assert sorted(p.name for p in step.glob("*.mp4")) == ["main.mp4", "other.mp4", "own.mp4"]


def test_a_t2v_lora_loads_into_the_low_noise_expert_of_wan_2_2_i2v(make_run, cli, tiny_model_dir):
    from diffusers import WanImageToVideoPipeline

    config = make_run(steps=2, overrides=["validation.validation_prompt=''"])  # Wan 2.1 T2V
    assert cli(["train", "--config", str(config)]).exit_code == 0
    pipe = WanImageToVideoPipeline.from_pretrained(str(tiny_model_dir("wan", "i2v-14b-2.2-low")))
    g = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, 36, 2, 4, 4, generator=g), timestep=torch.tensor([300.0]),
        encoder_hidden_states=torch.randn(1, 8, 32, generator=g), return_dict=False,
    )  # fmt: skip
    with torch.no_grad():
        before = pipe.transformer_2(**inputs)[0]
        high = pipe.transformer(**inputs)[0]
    pipe.load_lora_weights(str(run_output_dir(config)), weight_name="pytorch_lora_weights.safetensors", load_into_transformer_2=True)
    with torch.no_grad():
        assert (pipe.transformer_2(**inputs)[0] - before).abs().max() > 1e-6
        assert torch.equal(pipe.transformer(**inputs)[0], high), "the high-noise expert is untouched"


def test_the_guides_plain_prompt_library_and_is_i2v_train_image_to_video_from_one_validation_image(make_run, cli):
    """The guide's files: a library of plain strings beside validation_image; its dataset's `is_i2v: true`."""
    import tomlkit

    config = make_run(steps=1, variant="i2v-14b-2.1")  # the tiny model's validation_image is set
    folder = config.parent
    video = {"num_frames": 17, "is_i2v": True}
    backend = [{"id": "clips", "type": "local", "dataset_type": "video", "instance_data_dir": "clips", "video": video}]
    (folder / "backend.json").write_text(json.dumps(backend))
    (folder / "library.json").write_text(json.dumps({"boat": "a paper boat", "cat": "a cat jumps"}))
    raw = read_config_file(config)
    del raw["data"]["instance_data_dir"]
    raw["data"]["data_backend_config"] = "backend.json"
    raw["validation"].update(user_prompt_library="library.json", validation_num_inference_steps=1)
    del raw["validation"]["validation_prompt"]
    config.write_text(tomlkit.dumps(raw))
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    step = run_output_dir(config) / "validation" / "step-1"
    assert sorted(p.name for p in step.glob("*.mp4")) == ["boat.mp4", "cat.mp4"]

    video["is_i2v"] = False
    (folder / "backend.json").write_text(json.dumps(backend))
    result = cli(["train", "--config", str(config)])
    assert result.exit_code != 0
    assert "is_i2v = false is not offered: the model flavour decides" in result.stderr.strip().splitlines()[-1]

"""The Flux plugin end to end on the tiny model, through the CLI: stills, mixed aspects, validation, the LoRA."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tuner.data.synthetic import write_synthetic_clips, write_synthetic_image
from tuner.report.jsonlog import read_log
from tuner.testing.runs import run_output_dir, step_losses

PROMPT = "a still red square on a black background"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """One 60-step overfit run on 2 square stills, a wide still and a clip (its first frame), shared below."""
    from tuner.testing.runs import run_cli, write_run_folder

    folder = tmp_path_factory.mktemp("flux-e2e")
    config = write_run_folder(folder, tiny_model_dir("flux"), plugin="flux", steps=60, clips=2)
    write_synthetic_image(folder / "clips" / "wide.png", width=96, height=64, index=5)
    write_synthetic_clips(folder / "clips", count=1, num_frames=9, width=64, height=64, start=7)
    result = run_cli(["train", "--plugin", "flux", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    return config, result


def test_stills_of_two_aspects_and_a_clips_first_frame_train_in_their_buckets(trained):
    _, result = trained
    text = result.output + result.stderr
    assert "4 samples per epoch in 2 bucket(s)" in text
    assert "@1 x3" in text and "@1 x1" in text  # every sample is one frame


def test_loss_falls_when_overfitting(trained):
    config, _ = trained
    losses = step_losses(run_output_dir(config))
    assert len(losses) == 60
    assert np.mean(losses[-15:]) < 0.9 * np.mean(losses[:15])


def test_validation_writes_an_image_and_a_contact_sheet(trained):
    config, result = trained
    step = run_output_dir(config) / "validation" / "step-60"
    image = np.asarray(Image.open(step / "main.png"))
    assert image.shape == (64, 64, 3) and image.std() > 0
    assert (step / "contact-sheet.png").is_file()
    assert str(step / "main.png") in result.output


def test_exported_lora_has_diffusers_keys_and_changes_flux_pipeline_output(trained, tiny_model_dir):
    from diffusers import FluxPipeline

    config, _ = trained
    out = run_output_dir(config)
    keys = list(load_file(out / "pytorch_lora_weights.safetensors"))
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in keys
    assert "transformer.single_transformer_blocks.1.proj_mlp.lora_B.weight" in keys
    assert not [k for k in keys if ".default" in k or not k.startswith("transformer.")]

    pipe = FluxPipeline.from_pretrained(str(tiny_model_dir("flux")))
    pipe.set_progress_bar_config(disable=True)

    def render():
        return pipe(
            PROMPT, height=64, width=64, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
            output_type="np", max_sequence_length=32,
        ).images[0]

    before = render()
    pipe.load_lora_weights(str(out), weight_name="pytorch_lora_weights.safetensors")
    after = render()
    assert np.abs(after - before).mean() > 1e-4


def test_demo_trains_the_tiny_flux_on_stills_and_validates(cli, tmp_path):
    result = cli(["demo", "--plugin", "flux", "--dir", str(tmp_path / "demo"), "--steps", "2"])
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "demo" / "clips").glob("*.png")) == ["still_000.png", "still_001.png"]
    step = tmp_path / "demo" / "output" / "validation" / "step-2"
    assert (step / "main.png").is_file() and (step / "contact-sheet.png").is_file()


def test_schnell_has_no_guidance_embedding_and_trains(make_run, cli, tiny_model_dir):
    from diffusers import FluxTransformer2DModel

    dev = FluxTransformer2DModel.load_config(str(tiny_model_dir("flux")), subfolder="transformer")
    schnell = FluxTransformer2DModel.load_config(str(tiny_model_dir("flux", "schnell")), subfolder="transformer")
    assert dev["guidance_embeds"] and not schnell["guidance_embeds"]
    config = make_run(plugin="flux", variant="schnell", steps=2, overrides=["validation.validation_prompt=''"])
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    assert len(step_losses(config.parent / "output")) == 2


def test_eval_loss_is_the_training_objective_at_given_noise_levels(make_run, cli):
    from tuner.config import load_run_config
    from tuner.train.timesteps import add_noise, draw_noise, velocity_errors

    overrides = [
        "validation.validation_prompt=''",
        "evaluation.eval_steps_interval=1",
        "evaluation.eval_split=0.5",
        "evaluation.eval_timesteps=2",
    ]
    config = make_run(plugin="flux", name="flux-eval", steps=2, clips=2, overrides=overrides)
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    assert [r["eval_loss"] > 0 for r in read_log(config.parent / "output") if r["event"] == "step"] == [True, True]

    # The hook on a hand-made batch: the velocity error of the packed latents, per sample, repeatable.
    host, run_config = load_run_config(config, None, None)
    bundle = host.load_model(run_config, torch.device("cpu"))
    from tuner_flux.loss import pack, transformer_inputs

    g = torch.Generator().manual_seed(0)
    batch = {
        "latents": torch.randn(2, 4, 8, 8, generator=g),
        "prompt_embeds": torch.randn(2, 32, 32, generator=g),
        "pooled_prompt_embeds": torch.randn(2, 32, generator=g),
    }
    sigmas = torch.tensor([0.2, 0.9])
    with torch.no_grad():
        got = host.eval_loss(bundle, batch, sigmas, torch.Generator().manual_seed(5), run_config)
        again = host.eval_loss(bundle, batch, sigmas, torch.Generator().manual_seed(5), run_config)
        x0 = pack(batch["latents"])
        noise = draw_noise(x0, torch.Generator().manual_seed(5))
        inputs = transformer_inputs(bundle, batch, add_noise(x0, noise, sigmas), sigmas)
        expected = velocity_errors(bundle.denoiser(**inputs, return_dict=False)[0], x0, noise)
    assert got.shape == (2,) and torch.equal(got, again)
    torch.testing.assert_close(got, expected)


def test_a_backend_file_of_stills_and_clips_trains_in_aspect_buckets(make_run, cli):
    import json

    import tomlkit

    from tuner.config import tomllib

    config = make_run(plugin="flux", name="flux-backend", steps=2, clips=2, overrides=["validation.validation_prompt=''"])
    root = config.parent
    for i, (w, h) in enumerate([(64, 64), (96, 64), (64, 96)]):
        write_synthetic_image(root / "stills" / f"s{i}.png", width=w, height=h, index=i)
    write_synthetic_clips(root / "videos", count=1, num_frames=9, width=96, height=64)
    backend = [
        {"id": "stills", "type": "local", "dataset_type": "image", "instance_data_dir": "stills", "resolution": 64},
        {"id": "clips", "type": "local", "dataset_type": "video", "instance_data_dir": "videos", "resolution": 64},
    ]
    (root / "backend.json").write_text(json.dumps(backend))
    raw = tomllib.loads(config.read_text())
    raw["data"] = {"data_backend_config": "backend.json", "cache_dir": "cache", "resolution": 64}
    config.write_text(tomlkit.dumps(raw))
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    text = result.output + result.stderr
    assert "dataset 'clips': model family 'flux' trains on at most 1 frame(s) per sample" in text
    assert "dataset 'stills': 3 samples per epoch in 3 bucket(s)" in text and "dataset 'clips': 1 samples" in text
    assert len(step_losses(root / "output")) == 2

"""The Wan plugin end to end on the tiny model, through the CLI."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tuner.report.jsonlog import read_log
from tuner.testing.runs import run_output_dir, step_losses


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """One 60-step overfit run on 2 clips, shared by the tests below."""
    from tuner.testing.runs import run_cli, write_run_folder

    folder = tmp_path_factory.mktemp("wan-e2e")
    config = write_run_folder(folder, tiny_model_dir("wan"), plugin="wan", steps=60, clips=2)
    result = run_cli(["train", "--plugin", "wan", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    return config, result


def test_loss_falls_when_overfitting_two_clips(trained):
    config, _ = trained
    losses = step_losses(run_output_dir(config))
    assert len(losses) == 60
    assert np.mean(losses[-15:]) < 0.9 * np.mean(losses[:15])


def test_files_land_where_the_readme_says(trained):
    config, result = trained
    out = run_output_dir(config)
    adapter = out / "pytorch_lora_weights.safetensors"
    assert adapter.is_file()
    assert (out / "checkpoint-30").is_dir() and (out / "checkpoint-60").is_dir()
    videos = sorted((out / "validation").glob("step-*/main.mp4"))
    assert [v.parent.name for v in videos] == ["step-30", "step-60"]
    assert str(adapter) in result.output and str(videos[-1]) in result.output


def test_validation_video_decodes_to_the_requested_frames(trained):
    import av

    config, _ = trained
    video = run_output_dir(config) / "validation" / "step-60" / "main.mp4"
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 17 and frames[0].shape == (64, 64, 3)


def test_hook_export_adapter_writes_comfyui_keys_by_default(trained):
    # The default layout loads in ComfyUI and in diffusers (test_wan_comfyui.py); the checkpoint's copy too.
    config, _ = trained
    for file in ("pytorch_lora_weights.safetensors", "checkpoint-30/pytorch_lora_weights.safetensors"):
        keys = list(load_file(run_output_dir(config) / file))
        assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in keys
        assert "diffusion_model.blocks.1.ffn.2.lora_B.weight" in keys
        assert "diffusion_model.blocks.0.self_attn.q.alpha" in keys
        assert not [k for k in keys if ".default" in k or not k.startswith("diffusion_model.blocks.")]


def test_exported_lora_loads_in_wan_pipeline_and_changes_its_output(trained, tiny_model_dir):
    from diffusers import WanPipeline

    config, _ = trained
    pipe = WanPipeline.from_pretrained(str(tiny_model_dir("wan")))
    pipe.set_progress_bar_config(disable=True)

    def render():
        return pipe(
            "a red square moving right on a black background",
            height=32,
            width=32,
            num_frames=5,
            num_inference_steps=3,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
            max_sequence_length=32,
        ).frames[0]

    before = render()
    pipe.load_lora_weights(str(run_output_dir(config)), weight_name="pytorch_lora_weights.safetensors")
    after = render()
    assert np.abs(after - before).mean() > 1e-4


_KILLER = """
import os, signal, sys
from pathlib import Path
from tuner import hookimpl
from tuner.config import load_run_config
from tuner.plugins import PluginHost
from tuner.train.run import train

class Killer:
    @hookimpl
    def on_checkpoint_saved(self, run, step, path):
        if step == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)  # a hard crash: no cleanup, no final save

host, cfg = load_run_config(Path(sys.argv[1]), None, None)
host = PluginHost.build(cfg.plugins, extra={"killer": Killer()})
from tuner.config import read_config_file, resolve_config
cfg = resolve_config(read_config_file(Path(sys.argv[1])), host, Path(sys.argv[1]).parent)
train(cfg, host)
"""


@pytest.mark.slow
def test_resume_after_a_kill_continues_at_the_next_step_and_matches_an_uninterrupted_run(make_run, cli):
    overrides = ["train.checkpoint_step_interval=4", "validation.validation_prompt=''"]
    interrupted = make_run(name="interrupted", steps=12, overrides=overrides)
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILLER), str(interrupted), "8"], capture_output=True, text=True
    )
    assert killed.returncode == -9, killed.stderr
    out = run_output_dir(interrupted)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    assert not (out / "pytorch_lora_weights.safetensors").exists()

    resumed = cli(["train", "--config", str(interrupted), "--set", "train.resume_from_checkpoint=latest"])
    assert resumed.exit_code == 0, resumed.stderr
    steps = [r["step"] for r in read_log(out) if r["event"] == "step"]
    assert steps == list(range(1, 13)), "resumed run continues at step 9 and finishes at 12"
    starts = [r["start_step"] for r in read_log(out) if r["event"] == "start"]
    assert starts == [0, 8]

    straight = make_run(name="straight", steps=12, overrides=overrides)
    assert cli(["train", "--config", str(straight)]).exit_code == 0
    a = load_file(out / "pytorch_lora_weights.safetensors")
    b = load_file(run_output_dir(straight) / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resume is bit-exact on CPU"
    losses_resumed = step_losses(out)
    assert losses_resumed == step_losses(run_output_dir(straight))

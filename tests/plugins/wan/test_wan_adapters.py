"""Adapter kinds and export formats on the tiny Wan: what loads where."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tuner.report.jsonlog import read_log


def _render(pipe):
    return pipe(
        "a red square moving right on a black background",
        height=32, width=32, num_frames=5, num_inference_steps=3,
        generator=torch.Generator().manual_seed(0), output_type="np", max_sequence_length=32,
    ).frames[0]


def _pipe(tiny_model_dir):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(str(tiny_model_dir("wan")))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _train(make_run, cli, name, *overrides):
    config = make_run(name=name, steps=4, overrides=["validation.validation_prompt=''", "train.learning_rate=1e-2", *overrides])
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return config.parent / "output"


def test_diffusers_and_comfyui_formats_load_in_diffusers_alike(make_run, cli, tiny_model_dir):
    # alpha != rank: each format must carry the scale its own way.
    diffusers_out = _train(make_run, cli, "d", "train.lora_rank=4", "train.lora_alpha=8.0")
    comfy_out = _train(make_run, cli, "c", "train.lora_rank=4", "train.lora_alpha=8.0", "train.lora_format='comfyui'")
    comfy = load_file(comfy_out / "pytorch_lora_weights.safetensors")
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in comfy
    assert "diffusion_model.blocks.1.ffn.2.lora_B.weight" in comfy
    assert comfy["diffusion_model.blocks.0.self_attn.q.alpha"].item() == 8.0
    # Same seed, same training: the two files hold the same adapter in two layouts.
    base = _render(_pipe(tiny_model_dir))
    renders = []
    for out in (diffusers_out, comfy_out):
        pipe = _pipe(tiny_model_dir)
        pipe.load_lora_weights(str(out), weight_name="pytorch_lora_weights.safetensors")
        renders.append(_render(pipe))
    assert np.abs(renders[0] - base).mean() > 1e-4
    np.testing.assert_allclose(renders[0], renders[1], atol=2e-3)


def test_lycoris_lokr_run_exports_files_that_load(make_run, cli, tiny_model_dir, tmp_path):
    from diffusers import WanTransformer3DModel
    from lycoris import create_lycoris_from_weights

    lycoris_config = tmp_path / "lokr.json"
    lycoris_config.write_text(json.dumps({"algo": "lokr", "multiplier": 1.0, "linear_dim": 10000, "linear_alpha": 1, "factor": 4}))
    out = _train(make_run, cli, "l", "train.lora_type='lycoris'", f"train.lycoris_config='{lycoris_config}'")
    native = load_file(out / "pytorch_lora_weights.safetensors")
    assert "lycoris_blocks_0_attn1_to_q.lokr_w1" in native
    assert any(k.endswith("lokr_w2") and v.abs().sum() > 0 for k, v in native.items()), "LoKr trained"
    losses = [r["loss"] for r in read_log(out) if r["event"] == "step"]
    assert len(losses) == 4

    # The file loads with LyCORIS onto a fresh transformer and changes its output.
    folder = tiny_model_dir("wan")
    model = WanTransformer3DModel.from_pretrained(str(folder), subfolder="transformer")
    x, t, text = torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 8, 32)
    before = model(x, t, text, return_dict=False)[0]
    network, _ = create_lycoris_from_weights(1.0, str(out / "pytorch_lora_weights.safetensors"), model)
    network.apply_to()
    network.load_state_dict(native)
    after = model(x, t, text, return_dict=False)[0]
    assert not torch.allclose(before, after)

    comfy_out = _train(make_run, cli, "lc", "train.lora_type='lycoris'", f"train.lycoris_config='{lycoris_config}'", "train.lora_format='comfyui'")
    comfy = load_file(comfy_out / "pytorch_lora_weights.safetensors")
    assert "diffusion_model.blocks.0.self_attn.q.lokr_w1" in comfy and "diffusion_model.blocks.0.ffn.0.lokr_w2" in comfy


def test_bad_lycoris_config_is_one_clear_error(make_run, cli, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"multiplier": 1}')
    config = make_run(steps=1, overrides=["train.lora_type='lycoris'", f"train.lycoris_config='{bad}'"])
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 2 and "expected an object with at least 'algo'" in result.stderr


def test_gradient_checkpointing_gives_the_same_loss(make_run, cli):
    plain = _train(make_run, cli, "plain")
    ckpt = _train(make_run, cli, "ckpt", "train.gradient_checkpointing=true")
    a = [r["loss"] for r in read_log(plain) if r["event"] == "step"]
    b = [r["loss"] for r in read_log(ckpt) if r["event"] == "step"]
    assert a == pytest.approx(b, rel=1e-5)


def test_base_model_default_dtype(host_and_config=None):
    from tuner.config import resolve_config
    from tuner.plugins import PluginHost
    from tuner.train.precision import base_weight_dtype

    host = PluginHost.build(["wan"])
    assert base_weight_dtype(resolve_config({"train": {"mixed_precision": "bf16"}}, host)) == torch.bfloat16
    assert base_weight_dtype(resolve_config({"train": {"mixed_precision": "bf16", "base_model_default_dtype": "fp32"}}, host)) == torch.float32
    assert base_weight_dtype(resolve_config({"train": {"base_model_default_dtype": "bf16"}}, host)) == torch.bfloat16

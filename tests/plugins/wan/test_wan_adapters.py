"""Adapter kinds and export formats on the tiny Wan: what loads where."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tuner.report.jsonlog import read_log
from tuner_wan.export import ORIGINAL_NAMES

# The original name of a tiny-model block layer -> LyCORIS's own name for it (the diffusers path, underscored).
LYCORIS_NAMES = {f"blocks.{i}.{v}": f"lycoris_blocks_{i}_{k.replace('.', '_')}" for i in (0, 1) for k, v in ORIGINAL_NAMES.items()}


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


def _adapter_files(out):
    """Every adapter file a run wrote: the final one, the EMA one, and the copies inside checkpoints."""
    return sorted(out.glob("pytorch_lora_weights*.safetensors")) + sorted(out.glob("checkpoint-*/pytorch_lora_weights*.safetensors"))


def test_default_files_have_comfyui_names_and_load_in_diffusers_like_the_diffusers_layout(make_run, cli, tiny_model_dir):
    # alpha != rank: each layout must carry the scale its own way.
    options = ["train.lora_rank=4", "train.lora_alpha=8.0", "train.use_ema=true"]
    default_out = _train(make_run, cli, "default", *options)
    diffusers_out = _train(make_run, cli, "d", *options, "train.lora_format='diffusers'")
    files = _adapter_files(default_out)
    names = {f.relative_to(default_out).as_posix() for f in files}
    assert names == {
        f"{folder}pytorch_lora_weights{ema}.safetensors" for folder in ("", "checkpoint-2/", "checkpoint-4/") for ema in ("", "_ema")
    }
    for file in files:  # every written file in ComfyUI's names
        keys = set(load_file(file))
        assert all(k.startswith("diffusion_model.blocks.") for k in keys), file
        assert {"diffusion_model.blocks.0.self_attn.q.lora_A.weight", "diffusion_model.blocks.1.ffn.2.lora_B.weight"} <= keys
    assert load_file(files[0])["diffusion_model.blocks.0.self_attn.q.alpha"].item() == 8.0
    assert all(k.startswith("transformer.blocks.") for f in _adapter_files(diffusers_out) for k in load_file(f))
    # Same seed, same training: the two files hold the same adapter in two layouts.
    base = _render(_pipe(tiny_model_dir))
    renders = []
    for out in (default_out, diffusers_out):
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
    out = _train(
        make_run, cli, "l", "train.lora_type='lycoris'", f"train.lycoris_config='{lycoris_config}'", "train.lora_format='diffusers'"
    )
    native = load_file(out / "pytorch_lora_weights.safetensors")
    assert "lycoris_blocks_0_attn1_to_q.lokr_w1" in native
    # Without apply_preset LyCORIS adapts the modules LoRA would, no more (LyCORIS alone adapts every Linear).
    assert {k.split(".")[0] for k in native} == {
        f"lycoris_blocks_{i}_{m}" for i in (0, 1) for m in (
            "attn1_to_q", "attn1_to_k", "attn1_to_v", "attn1_to_out_0", "attn2_to_q", "attn2_to_k", "attn2_to_v",
            "attn2_to_out_0", "ffn_net_0_proj", "ffn_net_2",
        )
    }  # fmt: skip
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

    # The default file: ComfyUI's names, and no alpha on the full-factor LoKr modules (it would scale nothing).
    comfy_out = _train(make_run, cli, "lc", "train.lora_type='lycoris'", f"train.lycoris_config='{lycoris_config}'")
    comfy = load_file(comfy_out / "pytorch_lora_weights.safetensors")
    assert "diffusion_model.blocks.0.self_attn.q.lokr_w1" in comfy and "diffusion_model.blocks.0.ffn.0.lokr_w2" in comfy
    assert not [k for k in comfy if k.endswith(".alpha")] and any(k.endswith(".alpha") for k in native)
    for key, value in comfy.items():  # the same training, the same tensors
        module, param = key[len("diffusion_model.") :].rsplit(".", 1)
        assert torch.equal(value, native[f"{LYCORIS_NAMES[module]}.{param}"])


def test_a_lycoris_preset_matching_few_layers_is_a_start_up_notice_with_the_counts(make_run, cli, tmp_path):
    # SimpleTuner's Wan example names the class "Attention"; diffusers' Wan calls it WanAttention, so only the
    # feed-forward layers train (on the real 14B model, 60 of 300 layers).
    spec = {"algo": "lokr", "linear_dim": 10000, "linear_alpha": 1, "factor": 4,
            "apply_preset": {"target_module": ["Attention", "FeedForward"], "module_algo_map": {"FeedForward": {"factor": 4}}}}  # fmt: skip
    lycoris_config = tmp_path / "preset.json"
    lycoris_config.write_text(json.dumps(spec))
    config = make_run(name="few", steps=1, overrides=["validation.validation_prompt=''", "train.lora_type='lycoris'", f"train.lycoris_config='{lycoris_config}'"])
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    line = next(line for line in result.stderr.splitlines() if "apply_preset adapts" in line)
    assert line.startswith("notice:")
    # 2 blocks x 2 feed-forward layers of the 26 linear layers; the unmatched class with the model's own.
    assert "adapts 4 of 26 linear layers" in line
    assert "matched no module: target_module 'Attention' (did you mean 'WanAttention'?)" in line

    spec["apply_preset"]["target_module"] = ["WanAttention", "FeedForward"]
    lycoris_config.write_text(json.dumps(spec))
    result = cli(["train", "--config", str(config), "--set", "train.overwrite_output_dir=true"])
    assert result.exit_code == 0, result.stderr
    assert "apply_preset adapts 20 of 26 linear layers" in result.output + result.stderr
    assert "notice: train.lycoris_config" not in result.stderr


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

"""Wan 2.2 A14B: each expert trains only on its own noise levels, and both can train in one run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tuner.config import read_config_file, resolve_config
from tuner.errors import ConfigError
from tuner.plugins import PluginHost
from tuner.train.timesteps import sample_sigmas
from tuner.validate.evaluation import eval_sigmas

HIGH = "t2v-14b-2.2-high"
T2V_BOUNDARY = 0.875  # the tiny T2V A14B's model_index.json, as the real repository's


@pytest.fixture(scope="module")
def host():
    return PluginHost.build(["wan"])


def _bundle(host, folder: Path, flavour: str, **wan):
    config = resolve_config(
        {
            "wan": {"pretrained_model_name_or_path": str(folder), "max_sequence_length": 32, "model_flavour": flavour, **wan},
            "train": {"flow_schedule_shift": 3.0},
        },
        host,
    )
    return config, host.load_model(config, torch.device("cpu"))


def _timesteps_seen(modules: dict[str, torch.nn.Module]) -> tuple[dict[str, list[float]], list]:
    seen: dict[str, list[float]] = {name: [] for name in modules}
    handles = [
        module.register_forward_pre_hook(
            lambda _m, _a, kw, name=name: seen[name].extend(kw["timestep"].flatten().tolist()), with_kwargs=True
        )
        for name, module in modules.items()
    ]
    return seen, handles


def _batch(size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"latents": torch.randn(size, 16, 5, 8, 8, generator=g), "prompt_embeds": torch.randn(size, 32, 32, generator=g)}


@pytest.mark.parametrize("distribution", ["logit_normal", "uniform"])
@pytest.mark.parametrize("shift", [1.0, 3.0, 8.0])
def test_restricted_draws_stay_inside_and_follow_the_full_distribution(distribution, shift):
    g = torch.Generator().manual_seed(0)
    high = sample_sigmas(5000, g, shift=shift, distribution=distribution, sigma_range=(0.9, 1.0))
    low = sample_sigmas(5000, g, shift=shift, distribution=distribution, sigma_range=(0.0, 0.9))
    assert high.min() >= 0.9 and high.max() <= 1.0
    assert low.max() < 0.9 and low.min() >= 0.0
    # The truncated draw is the full draw conditioned on the range (same quantiles).
    full = sample_sigmas(100_000, g, shift=shift, distribution=distribution)
    q = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(torch.quantile(high, q), torch.quantile(full[full >= 0.9], q), atol=0.01)
    assert torch.allclose(torch.quantile(low, q), torch.quantile(full[full < 0.9], q), atol=0.02)


def test_eval_sigmas_cover_only_the_trained_range():
    assert eval_sigmas(4, (0.875, 1.0)) == pytest.approx([0.890625, 0.921875, 0.953125, 0.984375])
    assert eval_sigmas(2) == [0.25, 0.75]


@pytest.mark.parametrize("flavour, inside", [(HIGH, lambda t: t >= 875.0), ("t2v-14b-2.2-low", lambda t: t < 875.0)])
def test_a_single_expert_run_trains_only_its_noise_levels(host, tiny_model_dir, flavour, inside):
    folder = tiny_model_dir("wan", HIGH)  # one tiny A14B folder holds both experts
    config, bundle = _bundle(host, folder, flavour)
    expected = "transformer" if flavour.endswith("high") else "transformer_2"
    assert [e.name for e in bundle.experts] == [expected] and bundle.denoiser is bundle.experts[0].module
    seen, handles = _timesteps_seen({"trained": bundle.denoiser})
    for i in range(4):
        host.compute_loss(bundle, _batch(1000), torch.Generator().manual_seed(i), config)
    for h in handles:
        h.remove()
    assert len(seen["trained"]) == 4000 and all(inside(t) for t in seen["trained"])


def test_both_experts_each_sample_goes_to_the_expert_owning_its_timestep(host, tiny_model_dir):
    config, bundle = _bundle(host, tiny_model_dir("wan", HIGH), HIGH, wan_train_both_experts=True)
    high, low = bundle.experts
    assert (high.name, low.name) == ("transformer", "transformer_2") and high.trained and low.trained
    assert high.sigma_range == (T2V_BOUNDARY, 1.0) and low.sigma_range == (0.0, T2V_BOUNDARY)
    seen, handles = _timesteps_seen({"high": high.module, "low": low.module})
    host.compute_loss(bundle, _batch(2000), torch.Generator().manual_seed(0), config)
    for h in handles:
        h.remove()
    assert len(seen["high"]) + len(seen["low"]) == 2000 and seen["high"] and seen["low"]
    assert min(seen["high"]) >= 875.0 and max(seen["low"]) < 875.0


def test_boundary_ratio_option_overrides_model_index(host, tiny_model_dir):
    _, bundle = _bundle(host, tiny_model_dir("wan", HIGH), HIGH, wan_boundary_ratio=0.5)
    assert bundle.sigma_range() == (0.5, 1.0)


def test_a_model_without_boundary_ratio_is_refused_for_an_expert_flavour(host, tiny_model_dir, tmp_path):
    import json
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir("wan", HIGH), folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["boundary_ratio"] = None
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError, match="wan_boundary_ratio"):
        _bundle(host, folder, HIGH)


def test_two_stage_validation_hands_each_step_to_its_expert(host, tiny_model_dir, tmp_path):
    from tuner.types.validation import ValidationRequest

    _, bundle = _bundle(host, tiny_model_dir("wan", HIGH), HIGH, wan_validation_load_other_stage=True)
    high, low = bundle.experts
    assert high.trained and not low.trained
    seen, handles = _timesteps_seen({"high": high.module, "low": low.module})
    request = ValidationRequest(
        step=0, key="main", prompt="a red square", negative_prompt="", num_frames=5, width=32, height=32,
        num_inference_steps=10, guidance_scale=1.0, seed=0, output_dir=tmp_path,
    )
    host.validate(bundle, request)
    for h in handles:
        h.remove()
    assert seen["high"] and seen["low"] and len(seen["high"]) + len(seen["low"]) == 10
    assert min(seen["high"]) >= 875.0 and max(seen["low"]) < 875.0


@pytest.fixture(scope="module")
def both_trained(tmp_path_factory, tiny_model_dir):
    from tuner.testing.runs import run_cli, write_run_folder

    folder = tmp_path_factory.mktemp("wan-both")
    overrides = ["wan.wan_train_both_experts=true", "train.train_batch_size=2", "validation.validation_step_interval=0"]
    config = write_run_folder(
        folder, tiny_model_dir("wan", HIGH), plugin="wan", steps=8, clips=2, overrides=overrides, variant=HIGH
    )
    result = run_cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    return config, config.parent / read_config_file(config)["train"]["output_dir"]


def test_both_experts_write_two_files_that_load_into_their_own_transformer(both_trained, tiny_model_dir):
    from diffusers import WanPipeline

    _, out = both_trained
    files = {label: out / f"pytorch_lora_weights_{label}.safetensors" for label in ("high_noise", "low_noise")}
    assert all(f.is_file() for f in files.values()) and not (out / "pytorch_lora_weights.safetensors").exists()
    # The default layout (ComfyUI's names) for each expert's file; each loads into its own transformer below.
    assert not torch.equal(*(load_file(f)["diffusion_model.blocks.0.self_attn.q.lora_B.weight"] for f in files.values()))

    pipe = WanPipeline.from_pretrained(str(tiny_model_dir("wan", HIGH)))
    g = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, 16, 2, 8, 8, generator=g),
        timestep=torch.tensor([500.0]),
        encoder_hidden_states=torch.randn(1, 32, 32, generator=g),
        return_dict=False,
    )

    def outputs():
        with torch.no_grad():
            return pipe.transformer(**inputs)[0], pipe.transformer_2(**inputs)[0]

    before = outputs()
    pipe.load_lora_weights(str(out), weight_name=files["high_noise"].name, adapter_name="high")
    after_high = outputs()
    assert not torch.allclose(after_high[0], before[0]) and torch.equal(after_high[1], before[1])
    pipe.load_lora_weights(str(out), weight_name=files["low_noise"].name, adapter_name="low", load_into_transformer_2=True)
    after_low = outputs()
    assert torch.equal(after_low[0], after_high[0]) and not torch.allclose(after_low[1], before[1])


def test_both_experts_resume_exactly(both_trained, tmp_path):
    import shutil

    from tuner.testing.runs import run_cli

    config, out = both_trained
    folder = tmp_path / "resumed"
    shutil.copytree(config.parent, folder, ignore=shutil.ignore_patterns("output"))
    resumed = folder / out.name
    # Half the run, then the rest from its checkpoint.
    args = ["train", "--config", str(folder / config.name), "--set", "train.resume_from_checkpoint=latest"]
    assert run_cli([*args, "--set", "train.max_train_steps=4"]).exit_code == 0
    result = run_cli(args)
    assert result.exit_code == 0, result.stderr
    for label in ("high_noise", "low_noise"):
        name = f"pytorch_lora_weights_{label}.safetensors"
        full, part = load_file(out / name), load_file(resumed / name)
        assert all(torch.equal(full[k], part[k]) for k in full)


def test_experts_take_turns_only_frozen_weights_move(host, tiny_model_dir):
    from tuner.train.adapters import attach_adapters
    from tuner.train.experts import ExpertTurns, move_frozen
    from tuner.train.settings import TrainSection

    _, bundle = _bundle(host, tiny_model_dir("wan", HIGH), HIGH, wan_train_both_experts=True)
    attach_adapters(bundle, TrainSection(lora_rank=4), ["to_q"])
    moves: list[tuple[str, str]] = []
    names = {id(e.module): e.name for e in bundle.experts}
    accelerator = torch.device("cpu")  # stands for the accelerator; the recorder checks who goes where
    turns = ExpertTurns(bundle, accelerator, move=lambda m, d: moves.append((names[id(m)], "park" if d is not accelerator else "run")))
    bundle.run.expert_switch = turns
    high, low = bundle.experts
    assert bundle.enter(high) is high.module
    assert moves == [("transformer_2", "park"), ("transformer", "run")]
    bundle.enter(high)  # already there: nothing moves
    assert len(moves) == 2
    bundle.enter(low)
    assert moves[2:] == [("transformer", "park"), ("transformer_2", "run")]
    # The real mover leaves trainable (adapter) weights alone.
    lora = high.module.blocks[0].attn1.to_q.lora_A["default"].weight
    frozen = high.module.blocks[0].attn1.to_q.base_layer.weight
    before = (lora.data_ptr(), frozen.data_ptr())
    move_frozen(high.module, torch.device("cpu"))
    assert (lora.data_ptr(), frozen.data_ptr()) == before and lora.requires_grad and not frozen.requires_grad


def test_the_low_expert_from_a_single_safetensors_file(host, tiny_model_dir, tmp_path):
    """pretrained_transformer_model_name_or_path names the trained expert's weights, here transformer_2's."""
    from diffusers import WanTransformer3DModel
    from safetensors.torch import save_file

    folder = tiny_model_dir("wan", HIGH)
    tuned = WanTransformer3DModel.from_pretrained(str(folder), subfolder="transformer_2")
    with torch.no_grad():
        tuned.blocks[0].attn1.to_q.weight.add_(1.0)
    single = tmp_path / "low.safetensors"
    save_file(tuned.state_dict(), str(single))
    _, bundle = _bundle(
        host, folder, "t2v-14b-2.2-low", pretrained_transformer_model_name_or_path=str(single),
        wan_validation_load_other_stage=True,
    )
    high, low = bundle.experts
    assert low.trained and torch.equal(low.module.blocks[0].attn1.to_q.weight, tuned.blocks[0].attn1.to_q.weight)
    base_high = WanTransformer3DModel.from_pretrained(str(folder), subfolder="transformer")
    assert torch.equal(high.module.blocks[0].attn1.to_q.weight, base_high.blocks[0].attn1.to_q.weight)

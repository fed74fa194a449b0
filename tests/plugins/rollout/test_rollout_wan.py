"""Scheduled sampling on tiny Wan: Wan 2.2's experts (one trained, or both), and with CREPA."""

from __future__ import annotations

import math

import pytest
import torch

from tuner.config import resolve_config
from tuner.plugins import PluginHost
from tuner.testing.runs import step_losses
from tuner_rollout.rollout import Rollout
from tuner_rollout.settings import RolloutSection

HIGH = "t2v-14b-2.2-high"
BOUNDARY = 875.0  # the tiny T2V A14B's boundary_ratio x 1000


class JustBelow:
    """Rolls out as if every training sigma sat just below the boundary, so that each rollout crosses it."""

    def __init__(self, inner: Rollout) -> None:
        self.inner = inner

    def rewrite(self, plain, predict, generator, step):  # type: ignore[no-untyped-def]
        import dataclasses

        near = dataclasses.replace(plain, sigmas=torch.full_like(plain.sigmas, BOUNDARY / 1000 - 0.005))
        return self.inner.rewrite(near, predict, generator, step)


def _expert_run(host, folder, flavour, near=False, **wan):
    config = resolve_config({
        "wan": {"pretrained_model_name_or_path": str(folder), "max_sequence_length": 32, "model_flavour": flavour, **wan},
    }, host)  # fmt: skip
    bundle = host.load_model(config, torch.device("cpu"))
    section = RolloutSection(scheduled_sampling_max_step_offset=20, scheduled_sampling_probability=1.0,
                             scheduled_sampling_sampler="euler")
    bundle.run.input_rewriter = Rollout(section, bundle.sigma_range())
    if near:
        bundle.run.input_rewriter = JustBelow(bundle.run.input_rewriter)
    for module in bundle.denoisers():
        module.train()
    seen: dict[str, list[tuple[float, bool]]] = {e.name: [] for e in bundle.experts}
    for expert in bundle.experts:
        expert.module.register_forward_pre_hook(
            lambda _m, _a, kw, name=expert.name: seen[name].extend(
                (t, torch.is_grad_enabled()) for t in kw["timestep"].flatten().tolist()), with_kwargs=True)
    g = torch.Generator().manual_seed(2)
    batch = {"latents": torch.randn(4, 16, 2, 4, 4, generator=g), "prompt_embeds": torch.randn(4, 32, 32, generator=g)}
    out = host.compute_loss(bundle, batch, torch.Generator().manual_seed(0), config)
    return bundle, seen, out


@pytest.fixture(scope="module")
def host():
    return PluginHost.build(["wan"])


@pytest.mark.slow
@pytest.mark.parametrize("flavour", [HIGH, "t2v-14b-2.2-low"])
def test_one_trained_expert_rolls_out_within_its_own_range(host, tiny_model_dir, flavour):
    bundle, seen, out = _expert_run(host, tiny_model_dir("wan", HIGH), flavour)
    (name, levels), = seen.items()
    rollout = [t for t, grad in levels if not grad]
    assert rollout and math.isfinite(float(out.loss)) and out.logs["rollout_forwards"] == len(rollout)
    inside = (lambda t: t >= BOUNDARY) if flavour == HIGH else (lambda t: t < BOUNDARY)
    assert all(inside(t) for t in rollout), f"{name} rolled out outside its range"


@pytest.mark.slow
def test_both_experts_each_rollout_step_runs_on_the_expert_owning_its_level(host, tiny_model_dir):
    bundle, seen, out = _expert_run(host, tiny_model_dir("wan", HIGH), HIGH, near=True, wan_train_both_experts=True)
    high = [t for t, grad in seen["transformer"] if not grad]
    low = [t for t, grad in seen["transformer_2"] if not grad]
    assert high and low, "the rollouts crossed the boundary: both experts denoised"
    assert min(high) >= BOUNDARY and max(low) < BOUNDARY
    assert math.isfinite(float(out.loss))


@pytest.mark.slow
def test_wan_trains_with_rollout_and_crepa_and_resumes_exactly(make_run, cli, tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    dino = tmp_path_factory.mktemp("dino") / "dinov2-tiny"
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                             image_size=28)).save_pretrained(dino)
    overrides = [
        "plugins=['wan', 'crepa', 'rollout']", "crepa_enabled=true", "crepa_block_index=0", f"crepa_encoder='{dino}'",
        "crepa_encoder_image_size=28", "validation.validation_prompt=''", "scheduled_sampling_max_step_offset=3",
        "scheduled_sampling_probability=1.0", "scheduled_sampling_reflexflow=true", "train.checkpoint_step_interval=2",
        "train.gradient_accumulation_steps=2",
    ]  # fmt: skip
    config = make_run(steps=4, overrides=overrides)
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    assert "scheduled sampling: each sample with a 100% chance starts 1-3 steps noisier" in " ".join(result.stderr.split())
    straight = step_losses(config.parent / "output")
    assert len(straight) == 4 and all(math.isfinite(x) for x in straight)
    resumed = cli(["train", "--config", str(config), "--set", "train.output_dir='resumed'",
                   "--set", f"train.resume_from_checkpoint='{config.parent / 'output' / 'checkpoint-2'}'"])
    assert resumed.exit_code == 0, resumed.stderr
    assert step_losses(config.parent / "resumed") == straight[2:]

"""Scheduled sampling (rollout): options, solvers, the draws, ReflexFlow, resume, and Wan 2.2's experts."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from tuner.config import resolve_config
from tuner.data.synthetic import write_synthetic_clips
from tuner.errors import ConfigError
from tuner.plugins import PluginHost
from tuner.report.jsonlog import read_log
from tuner.testing.toy import ToyFamily, toy_config
from tuner.train.noising import NoisyInputs
from tuner.train.run import train
from tuner_rollout.plugin import describe_rollout
from tuner_rollout.rollout import Rollout, reflexflow_errors
from tuner_rollout.settings import RolloutSection
from tuner_rollout.solvers import integrate

ON = {"scheduled_sampling_max_step_offset": 4, "scheduled_sampling_probability": 1.0}


# -- options -------------------------------------------------------------------


def test_the_guides_flat_keys_land_in_the_rollout_section_and_switch_it_on():
    host = PluginHost.build(["rollout"], extra={"toy": ToyFamily()})
    config = resolve_config({"model_family": "toy", **ON, "scheduled_sampling_sampler": "rk4"}, host)
    section = config.section("rollout")
    assert section.enabled and section.scheduled_sampling_sampler == "rk4"
    assert section.scheduled_sampling_reflexflow_beta1 == 10.0 and section.scheduled_sampling_reflexflow_beta2 == 1.0


@pytest.mark.parametrize(("options", "message"), [
    ({"scheduled_sampling_max_step_offset": 3}, "scheduled_sampling_probability is 0 and there is no ramp"),
    ({"scheduled_sampling_max_step_offset": 3, "scheduled_sampling_ramp_steps": 10, "scheduled_sampling_prob_end": 0},
     "_prob_start and _prob_end are both 0"),
    ({"scheduled_sampling_sampler": "heun"}, "scheduled_sampling_sampler"),
    ({"scheduled_sampling_probability": 1.5}, "scheduled_sampling_probability"),
])  # fmt: skip
def test_options_that_would_do_nothing_or_are_wrong_are_one_line_errors(options, message):
    host = PluginHost.build(["rollout"], extra={"toy": ToyFamily()})
    with pytest.raises(ConfigError, match=message) as err:
        resolve_config({"model_family": "toy", **options}, host)
    assert "\n" not in str(err.value)


def test_the_probability_ramps_and_the_start_up_line_states_the_expected_forwards():
    ramp = RolloutSection(scheduled_sampling_max_step_offset=9, scheduled_sampling_ramp_steps=10,
                          scheduled_sampling_prob_start=0.1, scheduled_sampling_prob_end=0.5)
    assert [round(ramp.probability(s), 3) for s in (0, 5, 10, 50)] == [0.1, 0.3, 0.5, 0.5]
    plain = RolloutSection(scheduled_sampling_max_step_offset=9, scheduled_sampling_probability=0.5)
    # 2 samples x 50% x (9 + 1) / 2 steps x 1 forward = 5; rk4: 4 forwards a step; ReflexFlow: 1 more a sample.
    assert "about 5.0 extra forwards per step" in describe_rollout(plain, 2, 1)
    rk4 = plain.model_copy(update={"scheduled_sampling_sampler": "rk4", "scheduled_sampling_reflexflow": True})
    assert "about 21.0 extra forwards per step" in describe_rollout(rk4, 1, 2)
    assert "0.5 extra forwards per step at first, 2.5 after the ramp" in describe_rollout(ramp, 1, 1)


# -- solvers -------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["euler", "unipc", "dpm", "rk4"])
def test_each_solver_follows_a_known_flow_and_the_higher_orders_more_closely(sampler):
    # dx/dsigma = x (a flow whose exact solution is x * exp(sigma_end - sigma_start)), on a coarse grid.
    x = torch.ones(1, 4)
    grid = torch.linspace(0.9, 0.3, 7, dtype=torch.float64).tolist()
    exact = math.exp(0.3 - 0.9)
    got = float(integrate(sampler, x, grid, lambda y, s: y)[0, 0])
    error = abs(got - exact)
    euler = abs(float(integrate("euler", x, grid, lambda y, s: y)[0, 0]) - exact)
    assert error < 0.02
    if sampler != "euler":
        assert error < euler / 3, f"{sampler} is no better than Euler ({error} vs {euler})"


def _plain(batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, noise = torch.randn(batch, 3, 2, 4, 4, generator=g), torch.randn(batch, 3, 2, 4, 4, generator=g)
    sigmas = torch.tensor([0.2, 0.5, 0.8, 0.999])[:batch]
    return NoisyInputs(x0, noise, sigmas, (1 - sigmas.view(-1, 1, 1, 1, 1)) * x0 + sigmas.view(-1, 1, 1, 1, 1) * noise)


@pytest.mark.parametrize("sampler", ["euler", "unipc", "dpm", "rk4"])
def test_a_perfect_model_rolls_out_onto_the_training_input_and_a_biased_one_drifts(sampler):
    plain = _plain()
    section = RolloutSection(**ON, scheduled_sampling_sampler=sampler)
    perfect = Rollout(section, (0.0, 1.0)).rewrite(
        plain, lambda x, s, rows: plain.noise[rows] - plain.x0[rows], torch.Generator().manual_seed(0), 0)
    torch.testing.assert_close(perfect.noisy, plain.noisy, atol=1e-5, rtol=0)
    assert perfect.logs["rollout_samples"] == 3.0, "sigma 0.999 is the noisiest start: nothing to roll out above it"
    biased = Rollout(section, (0.0, 1.0)).rewrite(
        plain, lambda x, s, rows: plain.noise[rows] - plain.x0[rows] + 1.0, torch.Generator().manual_seed(0), 0)
    drift = (biased.noisy - plain.noisy).flatten(1).mean(1)[:3]
    assert (drift < 0).all() and (drift > -4 / 1000 - 1e-6).all(), "up to 4 steps of 1/1000 sigma, each off by 1"


def test_the_draws_come_from_the_generator_and_follow_the_probability():
    plain = _plain()
    section = RolloutSection(scheduled_sampling_max_step_offset=4, scheduled_sampling_probability=0.5)
    levels: list[list[float]] = []

    def run(seed):
        levels.clear()
        Rollout(section, (0.0, 1.0)).rewrite(plain, lambda x, s, rows: levels.append(float(s[0])) or x * 0,
                                             torch.Generator().manual_seed(seed), 0)
        return list(levels)

    assert run(3) == run(3), "the same micro-batch seed rolls out the same samples from the same levels"
    assert run(3) != run(4)
    counts = [Rollout(section, (0.0, 1.0)).rewrite(plain, lambda x, s, rows: x * 0, torch.Generator().manual_seed(s), 0)
              .logs["rollout_samples"] for s in range(40)]
    assert 0.3 < sum(counts) / (4 * 40) < 0.7


def test_a_rollout_never_starts_above_the_trained_experts_range():
    plain = _plain()
    seen: list[float] = []
    section = RolloutSection(scheduled_sampling_max_step_offset=50, scheduled_sampling_probability=1.0)
    plain.sigmas[:] = torch.tensor([0.2, 0.85, 0.87, 0.874])
    Rollout(section, (0.0, 0.875)).rewrite(plain, lambda x, s, rows: seen.append(float(s[0])) or x * 0,
                                           torch.Generator().manual_seed(0), 0)
    assert seen and max(seen) < 0.875


# -- ReflexFlow ------------------------------------------------------------------


def test_reflexflow_weighs_the_latents_the_rollout_moved_and_aligns_with_the_anti_drift_direction():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 8, generator=g), torch.randn(1, 8, generator=g)
    noisy = 0.5 * x0 + 0.5 * noise + 0.1
    along = noisy - x0  # a prediction along the anti-drift direction has no ADR term
    plain_mse = (along - (noise - x0)).pow(2).mean()
    terms = dict(alpha=0.0, beta1=10.0, beta2=1.0)
    assert torch.allclose(reflexflow_errors(along, x0, noise, noisy, along, None, **terms), plain_mse.view(1))
    against = reflexflow_errors(-along, x0, noise, noisy, -along, None, **terms)
    assert float(against) > float(plain_mse) + 10.0 * 3.9, "opposite direction: ADR near its maximum of 4"
    # FC: a latent whose prediction moved under the rollout weighs 1 + alpha * bias / mean(bias).
    clean = along.clone()
    clean[0, 0] += 1.0
    weighted = reflexflow_errors(along, x0, noise, noisy, clean, None, alpha=1.0, beta1=0.0, beta2=1.0)
    residual = (along - (noise - x0)).pow(2)
    expected = (residual[0, 1:].sum() + residual[0, 0] * (1 + 8.0) ** 2) / 8
    torch.testing.assert_close(weighted, expected.view(1))


# -- training ------------------------------------------------------------------


@pytest.fixture
def clips(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=4, num_frames=3, width=16, height=16)
    return tmp_path


def _train(folder, name, **options):
    host = PluginHost.build(["rollout"], extra={"toy": ToyFamily()})
    raw = toy_config(folder, train_batch_size=2, checkpoint_step_interval=3, **options)
    raw["train"]["output_dir"] = str(folder / name)
    raw["validation"]["validation_prompt"] = None
    raw.update(ON, scheduled_sampling_probability=0.5, scheduled_sampling_reflexflow=True)
    outputs = train(resolve_config(raw, host), host)
    return outputs, [r for r in read_log(folder / name) if r["event"] == "step"]


def test_rollout_with_gradient_accumulation_resumes_exactly(clips):
    options = dict(max_train_steps=6, gradient_accumulation_steps=2)
    straight, steps = _train(clips, "straight", **options)
    assert sum(s["rollout_samples"] for s in steps) > 0 and all(math.isfinite(s["loss"]) for s in steps)
    _train(clips, "resumed", **{**options, "max_train_steps": 3})
    resumed, again = _train(clips, "resumed", resume_from_checkpoint="latest", **options)
    assert [s["loss"] for s in again[-3:]] == [s["loss"] for s in steps[-3:]]
    a, b = load_file(straight["adapter"]), load_file(resumed["adapter"])
    assert all(torch.equal(a[k], b[k]) for k in a), "the rollout's draws come from the run's seed"


def test_the_rollout_changes_training_and_lowers_the_loss(clips):
    _, steps = _train(clips, "on", max_train_steps=30)
    losses = [s["loss"] for s in steps]
    assert sum(losses[-5:]) < sum(losses[:5])

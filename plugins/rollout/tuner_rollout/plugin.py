"""The scheduled sampling plugin, as tuner hooks (the ``tuner.plugins`` entry point ``rollout``).

It reaches a model family only through `rewrite_noisy_input`: the family builds
its training input with `tuner.train.noising.noisy_inputs` and lends it its
forward (``predict``); this plugin decides which samples are rolled out, from
where, with which solver, and how they are scored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuner import hookimpl
from tuner.progress import say

from tuner_rollout.settings import RolloutSection

if TYPE_CHECKING:
    from tuner.config import RunConfig
    from tuner.train.noising import InputRewriter
    from tuner.types.bundle import ModelBundle

__all__ = ["describe_rollout"]


@hookimpl
def register_config_sections(register: Any) -> None:
    register("rollout", RolloutSection)


@hookimpl
def rewrite_noisy_input(bundle: ModelBundle, config: RunConfig) -> InputRewriter | None:
    from tuner_rollout.rollout import Rollout

    section: RolloutSection = config.section("rollout")
    if not section.enabled:
        return None
    say(describe_rollout(section, config.train.train_batch_size, config.train.gradient_accumulation_steps))
    return Rollout(section, bundle.sigma_range())


def expected_forwards(section: RolloutSection, samples: int, probability: float) -> float:
    """Extra no-grad forwards (one sample each) expected per optimizer step over ``samples`` samples."""
    return samples * probability * section.forwards_per_sample()


def describe_rollout(section: RolloutSection, batch_size: int, accumulation: int) -> str:
    """The start-up line: what is rolled out, and the extra forwards a step is expected to cost."""
    samples = batch_size * accumulation
    s = section
    if s.scheduled_sampling_ramp_steps:
        chance = (
            f"a chance ramping from {s.scheduled_sampling_prob_start:.0%} to {s.scheduled_sampling_prob_end:.0%}"
            f" over {s.scheduled_sampling_ramp_steps} steps"
        )
        at = expected_forwards(s, samples, s.scheduled_sampling_prob_end)
        cost = f"about {expected_forwards(s, samples, s.scheduled_sampling_prob_start):.1f} extra forwards per step at first, {at:.1f} after the ramp"
    else:
        chance = f"a {s.scheduled_sampling_probability:.0%} chance"
        cost = f"about {expected_forwards(s, samples, s.scheduled_sampling_probability):.1f} extra forwards per step"
    reflex = " + ReflexFlow" if s.scheduled_sampling_reflexflow else ""
    return (
        f"scheduled sampling: each sample with {chance} starts 1-{s.scheduled_sampling_max_step_offset} steps noisier"
        f" and is denoised by the model ({s.scheduled_sampling_sampler}{reflex}): {cost} (no-grad, one sample each,"
        f" over {samples} sample(s) per step; a training sample costs about 3)"
    )

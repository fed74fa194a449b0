"""The ``[rollout]`` config section: the guide's scheduled sampling options, by their names."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["RolloutSection", "SAMPLERS", "TRAIN_TIMESTEPS"]

# Forwards one solver step costs: rk4 evaluates the model four times a step; the multistep solvers once.
SAMPLERS = {"unipc": 1, "euler": 1, "dpm": 1, "rk4": 4}
# A rollout step is one step of the 1000-timestep training schedule (sigma 1/1000), as the guide counts "t + k".
TRAIN_TIMESTEPS = 1000


class RolloutSection(BaseModel):
    """Scheduled sampling (training only): some samples start from a noisier sigma and are denoised by the model
    itself, without gradient, down to their training sigma; the training forward then sees that input."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    scheduled_sampling_max_step_offset: int = Field(
        0,
        ge=0,
        description="Most solver steps a rolled-out sample starts before its training sigma (steps of the 1000-step"
        " training schedule); each chosen sample draws 1 to this many. 0 turns scheduled sampling off.",
    )
    scheduled_sampling_probability: float = Field(
        0.0, ge=0.0, le=1.0, description="Chance that a sample is rolled out (without a ramp)."
    )
    scheduled_sampling_ramp_steps: int = Field(
        0,
        ge=0,
        description="When above 0, the chance moves linearly from scheduled_sampling_prob_start to"
        " scheduled_sampling_prob_end over this many optimizer steps (then stays), replacing"
        " scheduled_sampling_probability.",
    )
    scheduled_sampling_prob_start: float = Field(0.0, ge=0.0, le=1.0, description="The ramp's chance at step 0.")
    scheduled_sampling_prob_end: float = Field(0.5, ge=0.0, le=1.0, description="The ramp's chance at its end.")
    scheduled_sampling_sampler: Literal["unipc", "euler", "dpm", "rk4"] = Field(
        "unipc",
        description="Solver of the rollout: unipc (diffusers' UniPC), euler, dpm (DPM-Solver++ multistep) or rk4"
        " (classic Runge-Kutta, four forwards a step).",
    )
    scheduled_sampling_reflexflow: bool = Field(
        False,
        description="ReflexFlow on rolled-out samples: an anti-drift direction term and loss weights from the"
        " exposure bias (one more no-grad forward per rolled-out sample). See docs/rollout.md.",
    )
    scheduled_sampling_reflexflow_alpha: float = Field(
        1.0,
        ge=0.0,
        le=1e3,
        description="ReflexFlow frequency compensation: latents whose prediction moved most under the rollout weigh"
        " up to this much more (weight 1 + alpha x the exposure bias over its mean).",
    )
    scheduled_sampling_reflexflow_beta1: float = Field(
        10.0, ge=0.0, le=1e3, description="Weight of ReflexFlow's anti-drift direction term (the paper's 10)."
    )
    scheduled_sampling_reflexflow_beta2: float = Field(
        1.0, ge=0.0, le=1e3, description="Weight of the frequency-compensated velocity loss of rolled-out samples."
    )

    @model_validator(mode="after")
    def _coherent(self) -> RolloutSection:
        if not self.scheduled_sampling_max_step_offset:
            return self
        if self.scheduled_sampling_ramp_steps == 0 and self.scheduled_sampling_probability == 0.0:
            raise ValueError(
                "scheduled_sampling_max_step_offset is set but scheduled_sampling_probability is 0 and there is no"
                " ramp: no sample would be rolled out; set scheduled_sampling_probability (e.g. 0.5) or"
                " scheduled_sampling_ramp_steps"
            )
        if self.scheduled_sampling_ramp_steps and max(self.scheduled_sampling_prob_start, self.scheduled_sampling_prob_end) == 0:
            raise ValueError(
                "scheduled_sampling_ramp_steps is set but scheduled_sampling_prob_start and _prob_end are both 0:"
                " no sample would be rolled out; raise scheduled_sampling_prob_end"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.scheduled_sampling_max_step_offset > 0

    def probability(self, step: int) -> float:
        """The chance a sample of optimizer step ``step`` (0 for the first) is rolled out."""
        ramp = self.scheduled_sampling_ramp_steps
        if not ramp:
            return self.scheduled_sampling_probability
        start, end = self.scheduled_sampling_prob_start, self.scheduled_sampling_prob_end
        return start + (end - start) * min(1.0, step / ramp)

    def forwards_per_sample(self) -> float:
        """Expected extra no-grad forwards of one rolled-out sample: (max + 1) / 2 solver steps, plus ReflexFlow's."""
        steps = (self.scheduled_sampling_max_step_offset + 1) / 2
        return steps * SAMPLERS[self.scheduled_sampling_sampler] + (1 if self.scheduled_sampling_reflexflow else 0)

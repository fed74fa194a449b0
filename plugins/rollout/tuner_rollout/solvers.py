"""The rollout's solvers: diffusers' flow-matching schedulers on a given sigma grid, and a small RK4.

Every solver integrates ``dx/dsigma = v(x, sigma)`` from ``grid[0]`` down to
``grid[-1]``, one step per grid interval, with ``v`` the model's velocity. The
schedulers are diffusers' own (Euler: `FlowMatchEulerDiscreteScheduler`; UniPC and
DPM-Solver++: the multistep schedulers with ``use_flow_sigmas`` and
``prediction_type="flow_prediction"``), given the grid instead of their
inference schedule; none shifts it (``shift = flow_shift = 1``): the grid is
already made of the training sigmas.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["integrate"]

Velocity = Callable[["torch.Tensor", float], "torch.Tensor"]


def _scheduler(name: str, grid: list[float]) -> Any:
    import numpy as np
    import torch
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    from tuner_rollout.settings import TRAIN_TIMESTEPS

    flow = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 1.0}
    if name == "euler":
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=TRAIN_TIMESTEPS, shift=1.0)
        scheduler.set_timesteps(sigmas=np.array(grid))
    elif name == "unipc":
        scheduler = UniPCMultistepScheduler(num_train_timesteps=TRAIN_TIMESTEPS, **flow)
        scheduler.set_timesteps(sigmas=np.array(grid))
    else:  # dpm: its set_timesteps takes no sigmas (diffusers 0.42); the grid replaces the schedule it made
        scheduler = DPMSolverMultistepScheduler(num_train_timesteps=TRAIN_TIMESTEPS, **flow)
        scheduler.set_timesteps(num_inference_steps=len(grid))
        scheduler.sigmas = torch.tensor([*grid, 0.0])
        scheduler.timesteps = torch.tensor(grid) * TRAIN_TIMESTEPS
    return scheduler


def _rk4(x: torch.Tensor, grid: list[float], velocity: Velocity) -> torch.Tensor:
    for here, there in zip(grid[:-1], grid[1:]):
        h = there - here
        k1 = velocity(x, here)
        k2 = velocity(x + 0.5 * h * k1, here + 0.5 * h)
        k3 = velocity(x + 0.5 * h * k2, here + 0.5 * h)
        k4 = velocity(x + h * k3, there)
        x = x + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def integrate(name: str, x: torch.Tensor, grid: list[float], velocity: Velocity) -> torch.Tensor:
    """``x`` at ``grid[0]`` carried to ``grid[-1]`` by solver ``name``; float32 throughout."""
    x = x.float()
    if name == "rk4":
        return _rk4(x, grid, lambda y, s: velocity(y, s).float())
    scheduler = _scheduler(name, grid)
    for i in range(len(grid) - 1):  # the scheduler's schedule goes on to 0: stop at the grid's end
        x = scheduler.step(velocity(x, grid[i]).float(), scheduler.timesteps[i], x, return_dict=False)[0]
    return x

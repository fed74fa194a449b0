"""Learning-rate schedules (diffusers' implementations) and their curves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuner.train.settings import TrainSection

__all__ = ["build_schedule", "warmup_warning", "lr_curve"]


def build_schedule(optimizer: Any, tc: TrainSection, total_steps: int) -> Any:
    """A ``LambdaLR`` stepping once per optimizer step."""
    from diffusers.optimization import get_scheduler

    warmup = tc.lr_warmup_steps if tc.lr_scheduler != "constant" else 0
    return get_scheduler(
        tc.lr_scheduler,
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=max(1, total_steps),
        num_cycles=tc.lr_num_cycles,
        power=tc.lr_power,
    )


def warmup_warning(tc: TrainSection, total_steps: int) -> str | None:
    """A notice for warmups that swallow the run (the guide's example sets warmup = max steps)."""
    if tc.lr_scheduler == "constant" and tc.lr_warmup_steps:
        return "lr_warmup_steps is ignored by lr_scheduler 'constant': use 'constant_with_warmup' to warm up"
    if tc.lr_scheduler != "constant" and tc.lr_warmup_steps >= total_steps:
        return (
            f"lr_warmup_steps ({tc.lr_warmup_steps}) >= the run's {total_steps} steps: the learning rate only ever"
            f" ramps up and never reaches learning_rate = {tc.learning_rate}"
        )
    return None


def lr_curve(tc: TrainSection, total_steps: int) -> list[float]:
    """The learning rate of every optimizer step, without training."""
    import torch

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=tc.learning_rate)
    schedule = build_schedule(optimizer, tc, total_steps)
    lrs = []
    for _ in range(total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return lrs

"""An exponential moving average of the trained (adapter) weights."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["EMA"]


class EMA:
    """``shadow = decay * shadow + (1 - decay) * weight``, every ``interval`` steps, in float32."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float, interval: int = 1) -> None:
        self.params = params
        self.decay = decay
        self.interval = interval
        self.shadow = [p.detach().float().clone() for p in params]

    def update(self, step: int) -> None:
        """Call after optimizer step ``step`` (1-based)."""
        import torch

        if step % self.interval:
            return
        # One fused foreach kernel over every tensor (what torch's own EMA helpers use), not a loop of lerps.
        with torch.no_grad():
            torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Swap the EMA weights into the model for the duration (validation, export)."""
        import torch

        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            torch._foreach_copy_(self.params, [s.to(p.dtype) for s, p in zip(self.shadow, self.params)])
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, saved)

    def state_dict(self) -> list[torch.Tensor]:
        return [s.clone() for s in self.shadow]

    def load_state_dict(self, state: list[torch.Tensor]) -> None:
        if len(state) != len(self.shadow):
            from tuner.errors import CheckpointError

            raise CheckpointError("checkpoint EMA does not match this adapter")
        self.shadow = [s.to(p.device).float().clone() for s, p in zip(state, self.params)]

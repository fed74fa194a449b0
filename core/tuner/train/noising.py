"""The noisy input of a training forward, and its objective: flow-matching mixing, or a feature's rewrite.

A family's `compute_loss` draws its sigmas and noise as before, then asks
`noisy_inputs` for the input of its training forward instead of calling
`tuner.train.timesteps.add_noise` itself, and takes the loss from
`NoisyInputs.errors` instead of `velocity_errors`::

    noised = noisy_inputs(bundle, x0, noise, sigmas, generator, predict)
    pred = forward(noised.noisy, sigmas)            # the training forward, as before
    loss = noised.errors(pred, loss_mask).mean()

Without a feature this is exactly ``add_noise`` and ``velocity_errors``. A feature
that answered `rewrite_noisy_input` (scheduled sampling: the model's own rollout
from a noisier sigma) gets the plain inputs and ``predict``, the family's
forward with the batch's conditioning, and may return other noisy latents and
another per-sample objective. Why in the core: the family owns its forward and
its conditioning, the feature owns its method, and neither may name the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from tuner.types.bundle import ModelBundle

__all__ = ["Predict", "Objective", "NoisyInputs", "InputRewriter", "noisy_inputs"]

# (noisy latents of some rows, their sigmas, the row indices) -> the denoiser's velocity for them, shaped like the
# latents: the family's forward with those rows' conditioning, as its training forward runs it (routing aside).
Predict = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]
# (prediction, loss mask or None) -> per-sample errors ``(batch,)``, with gradient through the prediction.
Objective = Callable[["torch.Tensor", "torch.Tensor | None"], "torch.Tensor"]


@dataclass
class NoisyInputs:
    """What the training forward sees, and how its prediction is scored.

    :ivar x0: the clean latents, in the layout the family predicts in.
    :ivar noise: the noise drawn for them.
    :ivar sigmas: ``(batch,)`` the training noise levels.
    :ivar noisy: the forward's input: ``(1 - sigma) x0 + sigma noise``, or a feature's.
    :ivar objective: a feature's per-sample errors of a prediction; ``None`` scores
        the velocity ``noise - x0`` by mean squared error (`velocity_errors`).
    :ivar logs: plain floats for the step's logs (the family merges them).
    """

    x0: torch.Tensor
    noise: torch.Tensor
    sigmas: torch.Tensor
    noisy: torch.Tensor
    objective: Objective | None = None
    logs: dict[str, float] = field(default_factory=dict)

    def errors(self, pred: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample errors of ``pred`` ``(batch,)``, in float32: their mean is the training loss."""
        from tuner.train.timesteps import velocity_errors

        if self.objective is not None:
            return self.objective(pred, loss_mask)
        return velocity_errors(pred, self.x0, self.noise, loss_mask)

    def with_input(self, noisy: torch.Tensor, objective: Objective | None = None, **logs: float) -> NoisyInputs:
        """A copy with another forward input (and objective), logs added."""
        return replace(self, noisy=noisy, objective=objective, logs={**self.logs, **logs})


class InputRewriter(Protocol):
    """Returned by `rewrite_noisy_input`: replaces the training forward's input (and objective) per micro-batch."""

    def rewrite(
        self, plain: NoisyInputs, predict: Predict, generator: torch.Generator, step: int
    ) -> NoisyInputs:
        """Called under ``torch.no_grad()`` from the family's `compute_loss`, token routing off.

        :param plain: the flow-matching inputs the family drew.
        :param predict: the family's forward (adapter on, no gradient) for rows of the batch.
        :param generator: the micro-batch's generator: draw from it only (exact resume).
        :param step: optimizer steps done before this one (a schedule's clock).
        :return: ``plain`` itself, or `NoisyInputs.with_input` of it.
        """
        ...


def noisy_inputs(
    bundle: ModelBundle,
    x0: torch.Tensor,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    generator: torch.Generator,
    predict: Predict,
) -> NoisyInputs:
    """The training forward's input at ``sigmas``: ``add_noise``, or what ``bundle.run.input_rewriter`` makes of it.

    ``predict`` is only called when a feature rewrites inputs; it runs with
    gradients off and with ``bundle.run.router`` unset, so that a family whose
    forward reads the router routes no token there (validation does not route
    either).
    """
    import torch

    from tuner.train.timesteps import add_noise

    plain = NoisyInputs(x0, noise, sigmas, add_noise(x0, noise, sigmas))
    rewriter = bundle.run.input_rewriter
    if rewriter is None or not bundle.denoiser.training:
        return plain
    router, bundle.run.router = bundle.run.router, None
    try:
        with torch.no_grad():
            return rewriter.rewrite(plain, predict, generator, bundle.run.training_step)
    finally:
        bundle.run.router = router

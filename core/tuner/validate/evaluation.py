"""The stable evaluation loss: one number that compares checkpoints and runs.

Training losses are noisy because every step draws new noise levels and new
noise. The evaluation loss fixes both: the same held-out samples, the same
noise levels evenly spread over (0, 1) and the same noise every time, so it
changes only when the weights do.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

from tuner.errors import ConfigError, PluginError
from tuner.validate.inference import inference_state

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig
    from tuner.data.buckets import PlannedSample
    from tuner.plugins import PluginHost
    from tuner.types.bundle import ModelBundle

__all__ = ["eval_sigmas", "split_eval_samples", "EvalLoss"]

T = TypeVar("T")


def eval_sigmas(count: int, sigma_range: tuple[float, float] = (0.0, 1.0)) -> list[float]:
    """``count`` noise levels at the centres of equal slices of ``sigma_range`` (the trained experts' range)."""
    low, high = sigma_range
    return [low + (high - low) * (i + 0.5) / count for i in range(count)]


def split_eval_samples(samples: Sequence[T], config: RunConfig) -> tuple[list[T], list[T]]:
    """``(train, held_out)`` as ``eval_dataset_id`` or ``eval_split`` asks.

    With ``eval_split`` the choice depends only on the seed and the sample order.
    """
    ec = config.section("evaluation")
    if ec.eval_dataset_id:
        held_out = [s for s in samples if getattr(s, "dataset", None) == ec.eval_dataset_id]
        return [s for s in samples if getattr(s, "dataset", None) != ec.eval_dataset_id], held_out
    fraction = ec.eval_split
    if fraction <= 0:
        return list(samples), []
    count = max(1, round(len(samples) * fraction))
    if len(samples) - count < config.train.train_batch_size:
        raise ConfigError(
            f"eval_split = {fraction} holds out {count} of {len(samples)} samples, leaving too few to fill a batch of"
            f" train_batch_size = {config.train.train_batch_size}: lower eval_split or add clips"
        )
    held = set(random.Random(config.train.seed).sample(range(len(samples)), count))
    return [s for i, s in enumerate(samples) if i not in held], [samples[i] for i in sorted(held)]


class EvalLoss:
    """Computes the evaluation loss of the model as it is now; call it.

    Built once at start-up, which is when a family without the `eval_loss`
    hook is refused.
    """

    def __init__(
        self,
        host: PluginHost,
        bundle: ModelBundle,
        config: RunConfig,
        samples: Sequence[PlannedSample],
        device: torch.device,
    ) -> None:
        if not samples:
            raise ConfigError("the evaluation loss has no held-out samples: set eval_split or eval_dataset_id")
        if not host.implements(bundle.family, "eval_loss"):
            raise PluginError(
                f"model family '{bundle.family}' has no eval_loss hook, so eval_steps_interval cannot work:"
                " set it to 0"
            )
        section = config.section("evaluation")
        self.host, self.bundle, self.config = host, bundle, config
        self.samples = list(samples)
        self.device = device
        self.sigmas = eval_sigmas(section.eval_timesteps, bundle.sigma_range())
        self.batch_size = section.eval_batch_size
        self.seed = section.eval_seed

    def _sample(self, index: int) -> dict[str, torch.Tensor]:
        import torch

        from tuner.data.batches import load_batch

        latents, prompts = load_batch(self.samples, [index])
        text = self.host.collate_prompts(self.bundle, prompts)
        if text is None:
            text = {k: torch.stack([p[k] for p in prompts]) for k in prompts[0]}
        return {k: v.to(self.device) for k, v in {**latents, **text}.items()}

    def __call__(self) -> float:
        """The mean loss over every held-out sample and noise level."""
        import torch

        total, count = 0.0, 0
        with inference_state(self.bundle):
            for index in range(len(self.samples)):
                one = self._sample(index)
                for start in range(0, len(self.sigmas), self.batch_size):
                    sigmas = torch.tensor(self.sigmas[start : start + self.batch_size], device=self.device)
                    batch = {k: v.expand(len(sigmas), *v.shape[1:]) for k, v in one.items()}
                    # One seed per (sample, chunk): the same noise every time it is called.
                    seed = (self.seed * 1_000_003 + index * 7_919 + start) % (2**63 - 1)
                    generator = torch.Generator(self.device).manual_seed(seed)
                    losses = self.host.eval_loss(self.bundle, batch, sigmas, generator, self.config)
                    if losses.shape != sigmas.shape:
                        raise PluginError(
                            f"eval_loss of family '{self.bundle.family}' returned shape {tuple(losses.shape)};"
                            f" expected one loss per sample {tuple(sigmas.shape)}"
                        )
                    total += float(losses.double().sum())
                    count += len(sigmas)
        return total / count

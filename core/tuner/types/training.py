"""What the training hooks return (`compute_loss`, `auxiliary_loss`, `clip_features`) and what lifecycle hooks observe."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

__all__ = ["AuxiliaryLoss", "ClipFeatures", "LossOutput", "RunInfo"]


@dataclass
class LossOutput:
    """What `compute_loss` returns.

    :ivar loss: a scalar tensor to back-propagate (mean over the micro-batch).
    :ivar logs: plain floats shown in the progress bar and sent to trackers.
    :ivar sigmas: optional ``(batch,)`` noise levels drawn for the samples.
        Features that add a loss term read them (with several trained experts,
        a sample ran through the expert that owns its sigma, `Expert.owns`).
    """

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)
    sigmas: torch.Tensor | None = None


@dataclass
class AuxiliaryLoss:
    """A term a feature adds to the training loss (returned by `auxiliary_loss`).

    The core back-propagates ``loss + sum(weight * term.loss)``; a term whose
    weight is 0 is left out of the graph (its logs still appear).

    :ivar name: the feature's name, for errors.
    :ivar loss: scalar tensor, unweighted; ``None`` when only logs are given.
    :ivar weight: the term's weight at this step (a feature's own schedule).
    :ivar logs: plain floats merged into the step's logs (keep names unique:
        prefix them with the feature's name).
    """

    name: str
    loss: torch.Tensor | None
    weight: float = 1.0
    logs: dict[str, float] = field(default_factory=dict)


class ClipFeatures(Protocol):
    """Per-clip tensors a feature computes from the clean pixels, cached beside the latents.

    Returned by `clip_features` at set-up. Its entries are content-keyed like
    the latent cache (the latent entry's key plus ``name`` and ``identity``),
    written atomically, built only for clips that lack them, and merged into
    the batch `compute_loss` gets, so a run whose caches are complete never
    loads the feature's encoder.

    :ivar name: names the feature in entry keys and errors.
    :ivar identity: changes whenever what `encode` returns would change (the
        encoder, its input size, a version): entries made otherwise are not
        reused.
    """

    name: str
    identity: str

    def start(self, latents_to_encode: int) -> None:
        """Called once before any clip is encoded (also when nothing is), with how many clips still
        need the family's latents (`encode_batch`). A feature that frees the latent encoder refuses
        here when that is not 0."""
        ...

    def encode(self, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """``(batch, frames, channels, height, width)`` pixels in ``[-1, 1]`` -> one dict of CPU tensors
        per clip, called under ``torch.no_grad()`` on the encoding thread. Key names must differ
        from the family's (prefix them with ``name``)."""
        ...

    def done(self) -> None:
        """The caches are complete: release whatever `encode` loaded."""
        ...


@dataclass(eq=False)  # compared and hashed by identity: plugins may key per-run state on it
class RunInfo:
    """Facts about the run, passed to the lifecycle hooks.

    :ivar output_dir: where checkpoints, adapters and validation media go.
    :ivar max_train_steps: optimizer steps the run will take.
    :ivar start_step: 0 for a fresh run, k when resuming after step k.
    :ivar family: the model family being trained.
    :ivar config: the resolved `tuner.config.RunConfig`.
    :ivar base_model: the bundle's ``base_model`` (hub id or path of the base weights).
    :ivar pipeline_tag: the bundle's ``pipeline_tag`` (the Hub's task).
    :ivar flavour: the bundle's ``flavour``.
    :ivar license: the bundle's ``license``.
    """

    output_dir: Path
    max_train_steps: int
    start_step: int
    family: str
    config: Any
    base_model: str = ""
    pipeline_tag: str = ""
    flavour: str = ""
    license: str = ""

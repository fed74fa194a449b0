"""The objects that travel through the hooks.

Plugins receive and return these; the core owns their shape. They hold torch
objects but import nothing heavy at module level, so the CLI stays light.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

__all__ = [
    "ModelBundle",
    "LossOutput",
    "ValidationRequest",
    "SkipLayerGuidance",
    "ValidationResult",
    "RunInfo",
    "TokenRouter",
]


@dataclass
class ModelBundle:
    """What a model family's `load_model` hands to the core.

    :ivar family: the family name the plugin registered (e.g. ``"wan"``).
    :ivar denoiser: the network the adapter is attached to and trained.
    :ivar lora_target_modules: module-name suffixes the default LoRA targets
        (peft's ``target_modules``), chosen by the family.
    :ivar components: everything else the family needs (VAE, text encoder,
        tokenizer, scheduler, ...). The core never looks inside.
    :ivar temporal_compression: frames folded into one latent frame; clip
        lengths must be ``k * temporal_compression + 1``. 1 for image models.
    :ivar spatial_multiple: height and width must be multiples of this.
    :ivar cache_id: a string that changes whenever the encoders change, so
        cached latents and embeddings made by other encoders are not reused.
    :ivar supports_token_routing: the family's forward honours `router`.
    :ivar router: set by the core when a plugin answers `route_tokens`.
    :ivar base_model: where the base weights came from (hub id or path), for
        model cards and trackers.
    """

    family: str
    denoiser: torch.nn.Module
    lora_target_modules: list[str]
    components: dict[str, Any] = field(default_factory=dict)
    temporal_compression: int = 1
    spatial_multiple: int = 1
    cache_id: str = ""
    supports_token_routing: bool = False
    router: TokenRouter | None = None
    base_model: str = ""


@dataclass
class LossOutput:
    """What `compute_loss` returns.

    :ivar loss: a scalar tensor to back-propagate (mean over the micro-batch).
    :ivar logs: plain floats shown in the progress bar and sent to trackers.
    """

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class ValidationRequest:
    """One validation round.

    :ivar step: the optimizer step the round belongs to (0 = before training).
    :ivar prompts: nickname -> prompt; nicknames name the output files.
    :ivar negative_prompt: shared negative prompt ('' for none).
    :ivar num_frames: frames per clip (1 for images).
    :ivar width: output width in pixels.
    :ivar height: output height in pixels.
    :ivar num_inference_steps: sampler steps.
    :ivar guidance_scale: classifier-free guidance scale.
    :ivar seed: noise seed; the same seed every round makes rounds comparable.
    :ivar output_dir: the folder the media go into (already created).
    :ivar fps: frame rate of written videos.
    :ivar skip_layer_guidance: skip-layer guidance to apply, or ``None``.
    """

    step: int
    prompts: dict[str, str]
    negative_prompt: str
    num_frames: int
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    output_dir: Path
    fps: int = 16
    skip_layer_guidance: SkipLayerGuidance | None = None


@dataclass(frozen=True)
class SkipLayerGuidance:
    """Skip-layer guidance for one validation round.

    On the sampler steps inside ``[start, stop)`` (fractions of the steps), run
    one more conditional pass with the blocks ``layers`` skipped and add
    ``scale * (full - skipped)`` to the guided prediction.

    :ivar layers: indices of the blocks to skip (0-based).
    :ivar start: fraction of the steps after which it starts.
    :ivar stop: fraction of the steps after which it stops.
    :ivar scale: strength of the correction.
    """

    layers: tuple[int, ...]
    start: float
    stop: float
    scale: float

    def active(self, index: int, num_steps: int) -> bool:
        """Whether sampler step ``index`` (0-based) of ``num_steps`` gets the extra pass."""
        return self.start * num_steps <= index < self.stop * num_steps


@dataclass
class ValidationResult:
    """What `validate` returns.

    :ivar step: the step of the request.
    :ivar frames: nickname -> rendered frames, ``(frames, height, width, 3)``,
        float in ``[0, 1]`` or uint8. The core writes them (mp4 for clips, PNG
        for single frames) and adds the contact sheet: return frames rather
        than writing files yourself.
    :ivar media: nickname -> file. In the result the core passes to
        `on_validation_done`, every file of the round; a family may also write
        files itself and name them here.
    :ivar contact_sheet: the round's contact sheet PNG (set by the core).
    """

    step: int
    media: dict[str, Path] = field(default_factory=dict)
    frames: dict[str, Any] = field(default_factory=dict)
    contact_sheet: Path | None = None


@dataclass(eq=False)  # compared and hashed by identity: plugins may key per-run state on it
class RunInfo:
    """Facts about the run, passed to the lifecycle hooks.

    :ivar output_dir: where checkpoints, adapters and validation media go.
    :ivar max_train_steps: optimizer steps the run will take.
    :ivar start_step: 0 for a fresh run, k when resuming after step k.
    :ivar family: the model family being trained.
    :ivar config: the resolved `tuner.config.RunConfig`.
    :ivar base_model: the bundle's ``base_model`` (hub id or path of the base weights).
    """

    output_dir: Path
    max_train_steps: int
    start_step: int
    family: str
    config: Any
    base_model: str = ""


class TokenRouter(Protocol):
    """A policy for which tokens skip which blocks (returned by `route_tokens`).

    The model family owns the mechanism (gathering tokens and their positional
    data before a span of blocks, scattering them back after); the router only
    decides. A family calls it once per training forward.
    """

    def plan(
        self, num_blocks: int, num_tokens: int, batch_size: int, generator: torch.Generator | None
    ) -> list[tuple[int, int, torch.Tensor]]:
        """Return ``[(start_block, end_block, keep_index), ...]``.

        ``keep_index`` is a ``(batch, kept)`` long tensor of the tokens that run
        through blocks ``start_block..end_block`` inclusive; the others skip them.
        """
        ...

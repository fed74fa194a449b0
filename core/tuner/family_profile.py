"""What a model family tells `tuner configure`: its flavours, their defaults and their sizes.

A family answers the `describe_family` hook with a `FamilyProfile`. The core
never names a family: the wizard's questions, defaults and memory estimate all
come from here, so a third-party family gets the wizard for free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ActivationCounts", "ModelShape", "FlavourProfile", "FamilyProfile"]


@dataclass(frozen=True)
class ActivationCounts:
    """The tensors one block saves for the backward pass, per token, as counts of its widths.

    Measured by the family for mixed-precision training (bf16/fp16 autocast, a
    float32 adapter); `tuner.setup.estimate` turns them into bytes and the tests
    check them against the bytes torch's saved-tensor hooks see on CPU.

    :ivar hidden: tensors of the hidden width kept in the compute dtype (2 bytes).
    :ivar hidden_fp32: tensors of the hidden width kept in float32 (norms, modulation).
    :ivar ffn: tensors of the feed-forward width (compute dtype).
    :ivar per_rank: adapted linear layers that see every token: each saves ``rank`` elements.
    :ivar text: tensors of the hidden width saved per *text* token (cross-attention keys
        and values); 0 for a family whose text tokens join the sequence (count them in tokens).
    :ivar between_blocks_bytes: bytes per token per hidden width of a block's input, what
        gradient checkpointing keeps of each block (4: the residual stream is float32).
    :ivar outside_bytes: bytes per token per hidden width saved outside the blocks
        (embedding and output layers).
    :ivar checkpointed_outside_bytes: the same with gradient checkpointing, when it differs:
        the output layers then keep the last block's output, which no later block keeps as its
        input (Wan: its float32 final norm, 4 bytes). ``None``: ``outside_bytes``. Fitting
        this term into ``between_blocks_bytes`` instead makes the estimate right only at the
        depth it was fitted at (a 3-block model, then 40% over at 30-40 blocks).
    """

    hidden: float
    hidden_fp32: float
    ffn: float
    per_rank: float
    text: float = 0.0
    between_blocks_bytes: float = 4.0
    outside_bytes: float = 2.0
    checkpointed_outside_bytes: float | None = None


@dataclass(frozen=True)
class ModelShape:
    """A denoiser's sizes, as the memory and time estimate needs them.

    :ivar parameters: every parameter of the denoiser (what its weights weigh).
    :ivar block_parameters: the parameters inside the repeated blocks (what offloading moves).
    :ivar blocks: the depth of the block stack.
    :ivar hidden_size: the width of the residual stream.
    :ivar ffn_size: the inner width of the feed-forward layers.
    :ivar lora_io: the sum of ``in + out`` features over the linear layers LoRA adapts by
        default: a LoRA of rank ``r`` has ``r * lora_io`` parameters.
    :ivar linear_macs_per_token: multiply-adds of the blocks' linear layers for one token
        (about the blocks' weight count): the forward pass costs ``2 * this * tokens`` FLOPs.
    :ivar activations: what a block saves per token for the backward pass.
    """

    parameters: int
    block_parameters: int
    blocks: int
    hidden_size: int
    ffn_size: int
    lora_io: int
    linear_macs_per_token: int
    activations: ActivationCounts


@dataclass(frozen=True)
class FlavourProfile:
    """One model a user can pick.

    :ivar name: the flavour's name in the family's own words (Wan: a ``model_flavour``).
    :ivar summary: one line shown in the wizard.
    :ivar settings: config entries that select it, as ``{"section.key": value}``.
    :ivar model_key: the ``section.key`` naming where the weights are (a folder or hub id).
    :ivar model_source: that key's default: the flavour's hub repository.
    :ivar transformer_config: the denoiser's config (its ``config.json``) for the estimate;
        a local model folder's own config replaces it.
    :ivar resolution: a sensible training resolution (pixels, ``pixel_area``).
    :ivar frames: a sensible frame count per sample (1 for an image model).
    :ivar needs_first_frame: validation needs a first frame (image-to-video).
    :ivar validation: validation settings that suit the model (steps, guidance), as
        ``{"section.key": value}``.
    :ivar pixels_per_token: pixels along each side of one token (the VAE's compression times
        the patch size).
    :ivar cross_text_tokens: text tokens every block cross-attends to (0 when the text joins
        the sequence instead).
    :ivar joint_text_tokens: text tokens that join the image tokens in the sequence.
    :ivar frame_rate: the frames per second the model is trained and sampled at (what its
        `ModelBundle.frame_rate` will say); ``None`` for an image model. ``tuner data preview``
        resamples clips with it without loading the weights.
    """

    name: str
    summary: str
    settings: dict[str, Any]
    model_key: str
    model_source: str
    transformer_config: dict[str, Any]
    resolution: int = 480
    frames: int = 1
    needs_first_frame: bool = False
    validation: dict[str, Any] = field(default_factory=dict)
    pixels_per_token: int = 16
    cross_text_tokens: int = 0
    joint_text_tokens: int = 0
    frame_rate: float | None = None


@dataclass(frozen=True)
class FamilyProfile:
    """A family's answer to `describe_family`.

    :ivar flavours: the models a user can pick, the default first.
    :ivar frame_step: sample lengths must be ``frame_step * k + 1`` frames (Wan: 4, for its
        VAE's 4x temporal compression); 0 for an image family (one frame).
    :ivar spatial_multiple: heights and widths are multiples of this.
    :ivar latent_frames: ``frames -> latent frames`` of the VAE.
    :ivar shape: ``transformer config -> ModelShape``; may import torch (it is called only
        when the wizard runs, never at ``tuner --help``).
    """

    flavours: list[FlavourProfile]
    frame_step: int
    spatial_multiple: int
    latent_frames: Callable[[int], int]
    shape: Callable[[dict[str, Any]], ModelShape]

    def flavour(self, name: str) -> FlavourProfile:
        for flavour in self.flavours:
            if flavour.name == name:
                return flavour
        raise KeyError(name)

    def tokens(self, flavour: FlavourProfile, frames: int, height: int, width: int) -> int:
        """The tokens one sample of ``frames`` x ``height`` x ``width`` pixels makes in the denoiser."""
        side = flavour.pixels_per_token
        return self.latent_frames(frames) * (height // side) * (width // side) + flavour.joint_text_tokens

    def valid_frames(self, frames: int) -> bool:
        """Whether ``frames`` fits the family's frame rule."""
        if self.frame_step == 0:
            return frames == 1
        return frames >= 1 and (frames - 1) % self.frame_step == 0

    def nearest_frames(self, frames: int) -> int:
        """The valid frame count at or below ``frames`` (at least 1)."""
        if self.frame_step == 0:
            return 1
        return max(1, (max(1, frames) - 1) // self.frame_step * self.frame_step + 1)

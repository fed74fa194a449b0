"""The memory and step-time estimate `tuner configure` prints before it asks about memory options.

The formula (docs/configure.md explains each term)::

    peak memory = weights + adapter state + activations + runtime reserve
      weights        = block parameters x bytes per weight (bf16 2, int8/fp8 1, int4 0.5)
                       + the parameters outside the blocks x 2 (never quantized)
      adapter state  = rank x lora_io x (4 weight + 4 gradient + optimizer bytes per parameter)
      activations    = blocks x tokens x per-block bytes                      (no checkpointing)
                     = blocks x tokens x block-input bytes + tokens x per-block bytes   (checkpointing:
                       each block keeps its input and one block is recomputed at a time)
                       + tokens x outside bytes (with checkpointing: the checkpointed outside bytes,
                       and the cross-attended text states once: 2 x d x T)
      per-block bytes = 2 (hidden x d + ffn x f + per_rank x rank) + 4 hidden_fp32 x d + 2 text x d x T / tokens
                        + 2 rank x lora_io / blocks / tokens (autocast's bf16 copies of the adapter weights)
      (group offload: weights outside the blocks + 2 blocks on the accelerator)
    step time = training FLOPs / accelerator throughput (+ 2 x block weights / 25 GB/s with group offload)
      training FLOPs = forward x 2 for the frozen linear layers (the backward computes input gradients
                       only) + attention x 3 + adapter x 3, + one more forward with checkpointing
      forward        = 2 tokens x linear_macs_per_token x blocks + 4 blocks x hidden x (tokens^2 + tokens x T)

Everything is per sample (``train_batch_size = 1``); memory grows about linearly with the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuner.family_profile import FamilyProfile, FlavourProfile, ModelShape

__all__ = [
    "WEIGHT_BYTES",
    "OPTIMIZER_BYTES",
    "RESERVE_BYTES",
    "PCIE_BYTES_PER_SECOND",
    "Workload",
    "Estimate",
    "block_bytes",
    "forward_saved_bytes",
    "activation_bytes",
    "training_flops",
    "estimate",
    "workload",
]

GiB = 1024**3
# Bytes per stored weight of the frozen base, by base_model_precision (no_change: the bf16 the run loads).
WEIGHT_BYTES = {"no_change": 2.0, "int8-quanto": 1.0, "fp8-quanto": 1.0, "fp8uz-quanto": 1.0, "int4-quanto": 0.5}
# Optimizer state per trained (float32) parameter.
OPTIMIZER_BYTES = {"adamw": 8.0, "optimi-adamw": 8.0, "optimi-lion": 4.0, "prodigy": 16.0, "adamw_bf16": 4.0}
# The CUDA context, the allocator's slack and the cached batch: a fixed allowance.
RESERVE_BYTES = 1.0 * GiB
# Host-to-accelerator copy rate assumed for group offload (PCIe 4.0 x16 in practice), bytes per second.
PCIE_BYTES_PER_SECOND = 25e9


@dataclass(frozen=True)
class Workload:
    """One training sample as the denoiser sees it."""

    tokens: int
    text_tokens: int
    rank: int


@dataclass(frozen=True)
class Estimate:
    """The estimate of one memory option."""

    weights: float
    adapter: float
    activations: float
    flops: float
    seconds: float

    @property
    def total(self) -> float:
        return self.weights + self.adapter + self.activations + RESERVE_BYTES

    @property
    def total_gib(self) -> float:
        return self.total / GiB


def workload(
    profile: FamilyProfile, flavour: FlavourProfile, frames: int, height: int, width: int, rank: int
) -> Workload:
    """One sample of ``frames`` x ``height`` x ``width`` pixels of ``flavour``, trained with a rank-``rank`` LoRA."""
    return Workload(profile.tokens(flavour, frames, height, width), flavour.cross_text_tokens, rank)


def block_bytes(shape: ModelShape, work: Workload) -> float:
    """Bytes one block saves for the backward pass, for the whole sample."""
    a, d, n = shape.activations, shape.hidden_size, work.tokens
    per_token = 2.0 * (a.hidden * d + a.ffn * shape.ffn_size + a.per_rank * work.rank) + 4.0 * a.hidden_fp32 * d
    # Autocast keeps the compute-dtype copy of every float32 adapter weight it casts (2 bytes each), once a step.
    adapter_copies = 2.0 * work.rank * shape.lora_io / max(shape.blocks, 1)
    return n * per_token + 2.0 * a.text * d * work.text_tokens + adapter_copies


def forward_saved_bytes(shape: ModelShape, work: Workload, checkpointing: bool) -> float:
    """Bytes the forward pass keeps for the backward pass (what the saved-tensor hooks see)."""
    a, d, n = shape.activations, shape.hidden_size, work.tokens
    if checkpointing:  # each block keeps only its input, and the text it cross-attends to is kept once
        outside = a.outside_bytes if a.checkpointed_outside_bytes is None else a.checkpointed_outside_bytes
        return shape.blocks * n * a.between_blocks_bytes * d + outside * d * n + 2.0 * d * work.text_tokens
    return shape.blocks * block_bytes(shape, work) + a.outside_bytes * d * n


def activation_bytes(shape: ModelShape, work: Workload, checkpointing: bool) -> float:
    """The peak of a training step's activations: with checkpointing, one block is recomputed at a time."""
    recomputed = block_bytes(shape, work) if checkpointing else 0.0
    return forward_saved_bytes(shape, work, checkpointing) + recomputed


def training_flops(shape: ModelShape, work: Workload, checkpointing: bool) -> float:
    """FLOPs of one training step (forward and backward) on one sample."""
    n, t, d, blocks = work.tokens, work.text_tokens, shape.hidden_size, shape.blocks
    linear = 2.0 * n * shape.linear_macs_per_token
    attention = 4.0 * blocks * d * (n * n + n * t)
    adapter = 2.0 * n * work.rank * shape.lora_io
    forward = linear + attention + adapter
    flops = 2.0 * linear + 3.0 * attention + 3.0 * adapter
    return flops + (forward if checkpointing else 0.0)


def estimate(
    shape: ModelShape,
    work: Workload,
    *,
    precision: str = "no_change",
    checkpointing: bool = True,
    optimizer: str = "adamw",
    tflops: float = 80.0,
    offload: bool = False,
) -> Estimate:
    """Peak accelerator memory and step time of one training step, for ``tflops`` sustained TFLOP/s.

    With ``offload`` (group offload, one block per group) only the weights outside the blocks and two
    blocks (the one running, the next arriving) are on the accelerator, and every block's weights
    cross the bus twice a step (forward, backward), added to the step time (a side stream hides part).
    """
    per_weight = WEIGHT_BYTES.get(precision, 2.0)
    # Quantization packs the blocks' weights only; the embeddings and output layers stay bf16 (for Wan
    # 14B they are 232 M parameters: counting them at 1 byte under-stated an int8 base by 0.2 GiB).
    outside = (shape.parameters - shape.block_parameters) * WEIGHT_BYTES["no_change"]
    weights = outside + shape.block_parameters * per_weight
    transfer = 0.0
    if offload:
        per_block = shape.block_parameters / max(shape.blocks, 1)
        weights = outside + 2 * per_block * per_weight
        transfer = 2 * shape.block_parameters * per_weight / PCIE_BYTES_PER_SECOND
    adapter = work.rank * shape.lora_io * (8.0 + OPTIMIZER_BYTES.get(optimizer, 8.0))
    flops = training_flops(shape, work, checkpointing)
    return Estimate(
        weights=weights,
        adapter=adapter,
        activations=activation_bytes(shape, work, checkpointing),
        flops=flops,
        seconds=flops / (tflops * 1e12) + transfer,
    )

"""The ``[offload]`` config section: where the weights live, and how big the feed-forward bites are."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["MIN_CHUNK_TOKENS", "OffloadSection", "check_chunk_size", "chunk_meaning"]

# Below this a size counts samples, as the guide's (SimpleTuner's) does: a token chunk this small would
# run the feed-forward thousands of times per block for no further saving.
MIN_CHUNK_TOKENS = 16


class OffloadSection(BaseModel):
    """Memory features: group offload, model CPU offload, block swap, chunked feed-forward, start-up offload."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    # Read by `tuner_offload.chunking`; the core says so when one is set while this plugin is not enabled.
    environment_variables: ClassVar[tuple[str, ...]] = ("*_FEED_FORWARD_CHUNK_SIZE",)

    enable_group_offload: bool = Field(
        False,
        description="Keep the denoiser's frozen weights in CPU memory (or on disk) and bring each group of them to"
        " the accelerator just before it runs, in the forward and again in the backward pass. The adapter stays on"
        " the accelerator. Needs gradient_checkpointing = true; not with enable_model_cpu_offload or blocks_to_swap.",
    )
    group_offload_type: Literal["block_level", "leaf_level"] = Field(
        "block_level",
        description="block_level: groups of whole transformer blocks (fewer, larger copies); leaf_level: every"
        " layer on its own (least memory, most copies).",
    )
    group_offload_blocks_per_group: int = Field(
        1, ge=1, description="Transformer blocks moved together (block_level only); 1 uses the least memory."
    )
    group_offload_use_stream: bool = Field(
        False,
        description="CUDA only: copy the next group on a side stream while the current one computes. Ignored,"
        " with a notice, on other devices.",
    )
    group_offload_to_disk_path: Path | None = Field(
        None,
        description="Keep the offloaded weights in files under this folder instead of CPU memory (when CPU memory"
        " is what runs out); a fresh subfolder is used per run and removed at exit.",
    )
    enable_model_cpu_offload: bool = Field(
        False,
        description="Keep every network (denoiser and encoders) in CPU memory and move a whole network to the"
        " accelerator only while it runs, one at a time. Not with enable_group_offload or blocks_to_swap.",
    )
    blocks_to_swap: int = Field(
        0,
        ge=0,
        description="Keep the last N transformer blocks' frozen weights in CPU memory and stream each to the"
        " accelerator just before it runs (on a side stream on CUDA, overlapping compute); the other blocks stay"
        " put. 0 turns it off. Needs gradient_checkpointing = true; not with enable_group_offload or"
        " enable_model_cpu_offload.",
    )
    enable_chunked_feed_forward: bool = Field(
        False,
        description="Run each feed-forward layer over the tokens in chunks, so its wide hidden activation never"
        " exists for the whole sequence at once. Same results, lower peak memory, a slower step. The environment"
        " variable <FAMILY>_FEED_FORWARD_CHUNK_SIZE (WAN_FEED_FORWARD_CHUNK_SIZE for Wan) turns it on and sets"
        " the size.",
    )
    feed_forward_chunk_size: int = Field(
        4096,
        description=f"Size of each feed-forward chunk; smaller saves more memory and costs more time. {MIN_CHUNK_TOKENS}"
        " or more: tokens along the sequence. Below that, the guide's (SimpleTuner's) meaning: samples of the batch"
        " per chunk (the guide's 2: at most 2 samples at a time; a chunk as large as the batch holds half of it, as"
        " SimpleTuner does, and a batch of 1 is not split).",
    )
    offload_during_startup: bool = Field(
        False,
        description="Keep the encoders (VAE, text encoders) in CPU memory and move each to the accelerator only"
        " while it runs, so building the caches holds one network at a time; they leave the accelerator"
        " whenever the denoiser runs.",
    )

    @field_validator("feed_forward_chunk_size")
    @classmethod
    def _chunk_size(cls, value: int) -> int:
        return check_chunk_size(value)

    @model_validator(mode="after")
    def _one_placement(self) -> OffloadSection:
        chosen = [
            name
            for name, on in (
                ("enable_group_offload", self.enable_group_offload),
                ("enable_model_cpu_offload", self.enable_model_cpu_offload),
                ("blocks_to_swap", self.blocks_to_swap > 0),
            )
            if on
        ]
        if len(chosen) > 1:
            raise ValueError(
                f"{' and '.join(chosen)} both decide where the denoiser's weights live and cannot be combined: keep one"
            )
        group_only = {"group_offload_type", "group_offload_blocks_per_group", "group_offload_use_stream"}
        group_only |= {"group_offload_to_disk_path"}
        stray = sorted(group_only & self.model_fields_set) if not self.enable_group_offload else []
        if stray:
            raise ValueError(f"{', '.join(stray)} only apply with enable_group_offload = true")
        if self.group_offload_type == "leaf_level" and "group_offload_blocks_per_group" in self.model_fields_set:
            raise ValueError("group_offload_blocks_per_group only applies to group_offload_type = 'block_level'")
        if "feed_forward_chunk_size" in self.model_fields_set and not self.enable_chunked_feed_forward:
            raise ValueError("feed_forward_chunk_size only applies with enable_chunked_feed_forward = true")
        return self


def check_chunk_size(value: int) -> int:
    """A chunk size: tokens from `MIN_CHUNK_TOKENS` up, samples of the batch below (the guide's meaning)."""
    if value < 1:
        raise ValueError(
            f"feed_forward_chunk_size must be at least 1 ({MIN_CHUNK_TOKENS} or more counts tokens, less samples)"
        )
    return value


def chunk_meaning(size: int, batch_size: int) -> str:
    """What ``size`` means here, in one line (said at start-up when it is the guide's small size)."""
    if size >= MIN_CHUNK_TOKENS:
        return f"feed-forward layers run over {size} tokens at a time"
    per = size if size < batch_size else max(1, batch_size // 2)
    split = (
        f"the batch of {batch_size} runs {per} sample(s) at a time"
        if batch_size > 1
        else f"a batch of 1 is not split: give a token count ({MIN_CHUNK_TOKENS} or more, e.g. 4096) to save memory"
    )
    return (
        f"feed-forward chunk size {size} is read as the guide's: samples of the batch per chunk (token chunks start"
        f" at {MIN_CHUNK_TOKENS}); {split}"
    )

"""The offload plugin: where the denoiser's and the encoders' weights live, and chunked feed-forward.

Everything offloading does happens here, through `prepare_model`: the core and the model families
only describe the model (``ModelBundle.block_lists``, ``encoders``) and never name an offload
option. Chunking goes in with the base model; weight placement once the adapter exists, after the
other plugins (``trylast``), so that the adapter is known to stay on the accelerator.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tuner import hookimpl
from tuner.progress import notice, say

from tuner_offload.settings import OffloadSection

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig
    from tuner.types.bundle import ModelBundle


@hookimpl
def register_config_sections(register: Any) -> None:
    register("offload", OffloadSection)


@hookimpl(trylast=True)
def prepare_model(
    bundle: ModelBundle, config: RunConfig, phase: Literal["base", "adapted"], device: torch.device
) -> None:
    section: OffloadSection = config.section("offload")
    if phase == "base":
        _chunk(bundle, section, config.train.train_batch_size)
        return
    if section.enable_group_offload or section.blocks_to_swap:
        for module in bundle.denoisers():  # each expert of a model that has several streams on its own
            _stream(bundle, module, section, device, config.train.gradient_checkpointing)
    if section.enable_model_cpu_offload or section.offload_during_startup:
        _take_turns(bundle, section, device)
    if bundle.experts and (section.enable_group_offload or section.blocks_to_swap or section.enable_model_cpu_offload):
        # The weights of every expert are placed here already: the core's expert turns would fight it.
        bundle.run.expert_switch = _placed_here


def _placed_here(expert: Any) -> None:
    """Nothing to move when an expert runs: streaming or model CPU offload brings its weights in."""


def _chunk(bundle: ModelBundle, section: OffloadSection, batch_size: int) -> None:
    from tuner_offload.chunking import chunk_feed_forward, chunk_size_from_environment
    from tuner_offload.settings import MIN_CHUNK_TOKENS, chunk_meaning

    size = section.feed_forward_chunk_size if section.enable_chunked_feed_forward else None
    env = chunk_size_from_environment(bundle.family)
    if env is not None:
        size = env[1]
    if size is None:
        return
    layers = chunk_feed_forward(bundle, size)
    # One line says what the size means here: a token count, or the guide's samples per chunk.
    line = f"{chunk_meaning(size, batch_size)} ({layers} layers)"
    if env is not None:
        notice(f"{env[0]}={size}: {line}")
    elif size < MIN_CHUNK_TOKENS:
        notice(f"chunked feed-forward: {line}")  # the guide's small size: always said
    else:
        say(f"chunked feed-forward: {line}")


def _blocks_of(bundle: ModelBundle, denoiser: torch.nn.Module) -> list[torch.nn.Module]:
    """The denoiser's repeated blocks in execution order, from ``bundle.block_lists``."""
    from tuner.errors import PluginError

    if not bundle.block_lists:
        raise PluginError(
            f"model family '{bundle.family}' does not name its denoiser's blocks (ModelBundle.block_lists),"
            " which block offloading needs"
        )
    return [block for path in bundle.block_lists for block in denoiser.get_submodule(path)]


def _stream(
    bundle: ModelBundle, denoiser: torch.nn.Module, section: OffloadSection, device: torch.device, checkpointing: bool
) -> None:
    from tuner.errors import ConfigError

    from tuner_offload.streaming import block_units, leaf_units, stream_weights

    option = "enable_group_offload" if section.enable_group_offload else "blocks_to_swap"
    if not checkpointing:
        # Autograd keeps views of the weights a layer used until its backward: without recomputation
        # every block's weights would stay on the accelerator from its forward to its backward.
        raise ConfigError(
            f"{option} saves memory in training only with gradient checkpointing (without it the forward pass"
            " keeps every block's weights on the accelerator until the backward pass):"
            " set gradient_checkpointing = true"
        )

    use_stream = device.type == "cuda"
    if section.enable_group_offload and section.group_offload_use_stream and not use_stream:
        notice(f"group_offload_use_stream needs CUDA; this run is on {device.type}, so copies are not overlapped")
    if section.blocks_to_swap:
        blocks = _blocks_of(bundle, denoiser)
        if section.blocks_to_swap >= len(blocks):
            raise ConfigError(
                f"blocks_to_swap = {section.blocks_to_swap} but the denoiser has {len(blocks)} blocks: swap at most"
                f" {len(blocks) - 1}, or use enable_group_offload to offload them all"
            )
        first = len(blocks) - section.blocks_to_swap
        how = "on a side stream" if use_stream else "synchronously"
        say(f"block swap: blocks {first}-{len(blocks) - 1} of {len(blocks)} stream from CPU memory to {device} {how}")
        stream_weights(
            denoiser,
            block_units(blocks[first:], 1, prefix=f"swap_{first}"),
            prefetch_from=blocks[first - 1],
            device=device,
            use_stream=use_stream,
            disk_path=None,
        )
        return
    if section.group_offload_type == "leaf_level":
        units, kind = leaf_units(denoiser), "layers"
    else:
        units, kind = block_units(_blocks_of(bundle, denoiser), section.group_offload_blocks_per_group), "block groups"
    source = "disk" if section.group_offload_to_disk_path else "CPU memory"
    how = "on a side stream" if use_stream and section.group_offload_use_stream else "synchronously"
    say(f"group offload: {len(units)} {kind} stream from {source} to {device} {how}; the adapter stays on {device}")
    stream_weights(
        denoiser,
        units,
        prefetch_from=None,
        device=device,
        use_stream=use_stream and section.group_offload_use_stream,
        disk_path=_disk_folder(bundle, section.group_offload_to_disk_path),
    )


def _disk_folder(bundle: ModelBundle, root: Path | None) -> str | None:
    """A fresh folder per run under ``root`` (files of an earlier run must never be read back), removed at exit."""
    if root is None:
        return None
    root.mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="tuner-offload-", dir=root)
    weakref.finalize(bundle.denoiser, shutil.rmtree, folder, True)
    return folder


def _take_turns(bundle: ModelBundle, section: OffloadSection, device: torch.device) -> None:
    from tuner.errors import PluginError

    from tuner_offload.juggling import Turns

    if not bundle.encoders and not section.enable_model_cpu_offload:
        raise PluginError(
            f"offload_during_startup: model family '{bundle.family}' names no encoders (ModelBundle.encoders) to move"
        )
    turns = Turns(device)
    for key in bundle.encoders:
        turns.add_encoder(bundle.components[key])
    # With model CPU offload the denoiser (each expert) takes turns too; otherwise it only sends the encoders away.
    for module in bundle.denoisers():
        turns.add_denoiser(module, movable=section.enable_model_cpu_offload)
    names = [*bundle.encoders, *(["the denoiser"] if section.enable_model_cpu_offload else [])]
    what = "model CPU offload" if section.enable_model_cpu_offload else "offload during start-up"
    say(f"{what}: {', '.join(names) or 'nothing'} take turns on {device}, one at a time")

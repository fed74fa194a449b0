"""Streaming frozen weights to the accelerator just before they are used, in forward and in backward.

The copies themselves are diffusers' `ModuleGroup` (pinned CPU copies, a side stream on CUDA,
files on disk). What this module adds is the schedule around them, because diffusers' own group
offloading is built for inference: its hooks bring a group in before its forward and send it out
after, while training needs the weights a second time, when a checkpointed block is recomputed for
its backward pass (diffusers' own draft test of training with group offloading, PR #11515, fails
with a device mismatch). Its groups also move every parameter of a module, adapter included, which
would strand the adapter's gradients and optimizer state on the CPU. So:

* a unit holds only frozen tensors (a group of blocks, or one layer); trainable parameters, and
  the layers outside the blocks (embeddings, output projection: a few percent of the weights),
  stay on the accelerator for the whole run, so a family may run the blocks from its own loop
  (token routing does) without going through the denoiser's forward;
* forward: a unit comes in before it runs (the next one is prefetched on the side stream while it
  computes) and goes out after;
* backward: a hook on the unit's output fires when the gradient reaches it; the unit comes in
  again and stays while its backward (and, with gradient checkpointing, its recomputation) runs,
  the next unit in backward order is prefetched, and a unit is sent out once two later ones have
  been entered; whatever is left goes out when the backward pass ends.

Training with it needs gradient checkpointing: autograd keeps what a layer used (for a linear
layer, a view of its weight's storage) until that layer's backward, so without recomputation every
block's weights would stay on the accelerator from its forward to its backward whatever the schedule
does. With checkpointing the forward keeps only each block's input, and the block runs again, its
weights brought back, just before its backward. The recomputation stops as soon as it has what the
backward needs, before the block's forward returns, so it is the backward schedule, not the forward
hooks, that sends the block out again.

Hooks are registered under diffusers' own group-offloading name, so diffusers sees the model as
group offloaded: ``model.device`` is the accelerator and ``model.to(device)`` leaves it alone.

CUDA-only assumptions (this project's CI has no GPU; tests/plugins/offload/test_gpu_paths.py plans
them on a CPU, bench/gpu.py times them on a card):

* The side stream (``group_offload_use_stream``, block swap on CUDA) copies with
  ``non_blocking=True``, which overlaps compute only from page-locked memory: diffusers' ModuleGroup
  pins its CPU copies when it has a stream (``low_cpu_mem_usage=False`` keeps them pinned for the
  run, so a 14B expert pins 28 GB of host memory; pinning is slow, once, at start).
* The compute stream never reads a unit still being copied: `Schedule` calls
  ``stream.synchronize()`` (a host wait) before the first use of a prefetched unit and before
  sending a unit out. No CUDA event or ``record_stream`` is needed then (``record_stream=False``);
  the price is a host stall when a copy is late, which shows as a slower step, never as wrong values.
* At most three units are on the accelerator at once (the one running, the prefetched one, and in
  backward the one whose gradient just passed), so the peak is ~3 blocks' weights plus whatever
  stays resident, what `tuner.setup.estimate` counts as 2 blocks.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["Unit", "Schedule", "block_units", "leaf_units", "stream_weights"]

HOOK_NAME = "group_offloading"  # diffusers' key: keeps ModelMixin.to()/.device aware of the offloading


@dataclass(eq=False)
class Unit:
    """Frozen tensors that move together, and the modules whose forward brackets their use."""

    name: str
    params: list[torch.nn.Parameter]
    buffers: list[torch.Tensor]
    first: torch.nn.Module
    last: torch.nn.Module
    group: Any = None  # diffusers ModuleGroup, made by stream_weights
    index: int = -1  # position in execution order, set by stream_weights
    onloaded: bool = True
    held: bool = False  # the backward pass in progress still needs it


def _frozen(module: torch.nn.Module) -> tuple[list[torch.nn.Parameter], list[torch.Tensor]]:
    return [p for p in module.parameters() if not p.requires_grad], list(module.buffers())


def block_units(blocks: list[torch.nn.Module], per_group: int, prefix: str = "blocks") -> list[Unit]:
    """Consecutive blocks, ``per_group`` at a time, in execution order."""
    units = []
    for start in range(0, len(blocks), per_group):
        group = blocks[start : start + per_group]
        params, buffers = [], []
        for block in group:
            p, b = _frozen(block)
            params += p
            buffers += b
        units.append(Unit(f"{prefix}_{start}_{start + len(group) - 1}", params, buffers, group[0], group[-1]))
    return units


def leaf_units(model: torch.nn.Module) -> list[Unit]:
    """Every weight-holding layer (linear, convolution, embedding) whose weights are all frozen."""
    import torch.nn as nn

    layers = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    units = []
    for name, module in model.named_modules():
        if not isinstance(module, (*layers, nn.Embedding)):
            continue
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            units.append(Unit(name, params, list(module.buffers()), module, module))
    return units


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):  # also diffusers' BaseOutput
        for item in obj.values():
            yield from _tensors(item)


@dataclass(eq=False)
class Schedule:
    """When each unit comes in and goes out; one per model."""

    units: list[Unit]  # the blocks or layers, in execution order
    stream: Any = None  # the side stream copies run on (CUDA), or None
    _entered: list[Unit] = field(default_factory=list)
    _pending: bool = False
    _backward_running: bool = False

    def _wait(self) -> None:
        if self._pending:
            self.stream.synchronize()
            self._pending = False

    def bring_in(self, unit: Unit) -> None:
        if not unit.onloaded:
            unit.group.onload_()
            unit.onloaded = True
            self._pending = self.stream is not None
        self._wait()  # a prefetched unit may still be copying

    def prefetch(self, index: int) -> None:
        if self.stream is None or not 0 <= index < len(self.units) or self.units[index].onloaded:
            return
        self.units[index].group.onload_()  # asynchronous on the side stream
        self.units[index].onloaded = True
        self._pending = True

    def send_out(self, unit: Unit) -> None:
        if unit.onloaded and not unit.held:
            self._wait()
            unit.group.offload_()
            unit.onloaded = False

    # -- forward -------------------------------------------------------------

    def before_forward(self, unit: Unit) -> None:
        self.bring_in(unit)
        if not unit.held:  # a recomputation inside backward goes on to earlier units, not later ones
            self.prefetch(unit.index + 1)

    def after_forward(self, unit: Unit, output: Any) -> None:
        import torch

        if unit.held:  # recomputed inside backward (gradient checkpointing): its gradients still need it
            return
        if torch.is_grad_enabled():
            for tensor in _tensors(output):
                if tensor.requires_grad:
                    tensor.register_hook(functools.partial(self._gradient_arrives, unit))
        self.send_out(unit)

    # -- backward ------------------------------------------------------------

    def _gradient_arrives(self, unit: Unit, grad: torch.Tensor) -> None:
        from torch.autograd import Variable

        if not self._backward_running:
            self._backward_running = True
            Variable._execution_engine.queue_callback(self._backward_done)
        if unit.held:
            return
        unit.held = True
        self.bring_in(unit)
        self._entered.append(unit)
        # Two units back the gradient has moved on: nothing ahead of it needs those weights.
        while len(self._entered) > 2:
            done = self._entered.pop(0)
            done.held = False
            self.send_out(done)
        self.prefetch(unit.index - 1)

    def _backward_done(self) -> None:
        self._backward_running = False
        self._entered.clear()
        for unit in self.units:
            unit.held = False
            self.send_out(unit)


def _hook_class() -> type:
    from diffusers.hooks.group_offloading import GroupOffloadingHook

    class UnitHook(GroupOffloadingHook):
        """Calls the schedule around the forward of a unit's first and last module."""

        def __init__(self, unit: Unit, schedule: Schedule, config: Any) -> None:
            super().__init__(unit.group, config=config)
            self.unit, self.schedule = unit, schedule

        def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
            return module  # stream_weights sends every unit out once, after all hooks are in place

        def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            if module is self.unit.first:
                self.schedule.before_forward(self.unit)
            return args, kwargs

        def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
            if module is self.unit.last:
                self.schedule.after_forward(self.unit, output)
            return output

    return UnitHook


class _ExpectedMoveNote:
    """Drops diffusers' note that ``.to(device)`` is ignored on a group-offloaded model: the core places
    the denoiser with ``.to()`` after set-up, and ignoring that is exactly what offloading wants."""

    def filter(self, record: Any) -> bool:
        return "is group offloaded and moving it using" not in record.getMessage()


def _quiet_expected_move_note() -> None:
    import logging

    log = logging.getLogger("diffusers.models.modeling_utils")
    if not any(isinstance(f, _ExpectedMoveNote) for f in log.filters):
        log.addFilter(_ExpectedMoveNote())


def _is_plain(tensor: torch.Tensor) -> bool:
    import torch

    return type(tensor.data) in (torch.Tensor, torch.nn.Parameter)


def stream_weights(
    model: torch.nn.Module,
    units: list[Unit],
    *,
    prefetch_from: torch.nn.Module | None,
    device: torch.device,
    use_stream: bool,
    disk_path: str | None,
) -> Schedule:
    """Install the schedule: ``units`` live in CPU memory (or on disk); everything else, trainable
    parameters included, moves to ``device`` now.

    ``prefetch_from``: a module that runs just before the first unit (the block before it), whose forward
    starts the first unit's copy on the side stream.
    """
    import torch
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.group_offloading import GroupOffloadingConfig, GroupOffloadingType, ModuleGroup

    from tuner.errors import PluginError

    packed = sorted({n for n, p in model.named_parameters() if not _is_plain(p)})
    if packed:
        raise PluginError(
            f"offloading cannot move weights stored as tensor subclasses (a quantized base, e.g. {packed[0]}):"
            " use either a quantized base or offloading / block swap"
        )
    offloaded = {id(t) for unit in units for t in (*unit.params, *unit.buffers)}
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if id(tensor) not in offloaded:
                tensor.data = tensor.data.to(device)

    stream = torch.cuda.Stream(device) if use_stream else None
    cpu = torch.device("cpu")
    config = GroupOffloadingConfig(
        onload_device=device,
        offload_device=cpu,
        offload_type=GroupOffloadingType.BLOCK_LEVEL,
        non_blocking=stream is not None,
        record_stream=False,
        low_cpu_mem_usage=False,
        offload_to_disk_path=disk_path,
        stream=stream,
    )
    _quiet_expected_move_note()
    schedule = Schedule(units, stream)
    hook_class = _hook_class()
    for index, unit in enumerate(units):
        unit.index = index
        unit.group = ModuleGroup(
            modules=[],
            offload_device=cpu,
            onload_device=device,
            offload_leader=unit.last,
            onload_leader=unit.first,
            parameters=unit.params,
            buffers=unit.buffers,
            non_blocking=stream is not None,
            stream=stream,
            record_stream=False,
            low_cpu_mem_usage=False,
            onload_self=True,
            offload_to_disk_path=disk_path,
            group_id=unit.name,
        )
        for module in dict.fromkeys((unit.first, unit.last)):
            HookRegistry.check_if_exists_or_initialize(module).register_hook(
                hook_class(unit, schedule, config), HOOK_NAME
            )
        unit.onloaded = True
        schedule.send_out(unit)  # writes the disk copy, or takes the pinned copy, and frees the original
    if prefetch_from is not None and stream is not None and units:
        HookRegistry.check_if_exists_or_initialize(prefetch_from).register_hook(
            _prefetch_hook(schedule), "tuner_offload_prefetch"
        )
    return schedule


def _prefetch_hook(schedule: Schedule) -> Any:
    from diffusers.hooks import ModelHook

    class PrefetchFirst(ModelHook):
        def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            schedule.prefetch(0)
            return args, kwargs

    return PrefetchFirst()

"""Several processes training one adapter: who reads what, who writes, who waits.

accelerate is the engine: its launcher starts the processes (``accelerate launch
--num_processes N -m tuner train ...``), its process group carries gradients and
barriers, and its DDP wrapper averages the adapter's gradients. This module is the
one place that knows about ranks; everything else asks a `World`:

- ``world.main(obj)`` is ``obj`` on the main process and a stand-in that does
  nothing elsewhere: checkpoints, adapters, lifecycle reports (log, trackers,
  webhooks, hub), validation media and the console go through it, so only the main
  process writes them.
- ``world.shard(items)`` is this process's share of work every process listed the
  same way (cache entries to encode); ``world.gather`` brings the shares' results
  back to everyone.
- ``world.micro_index(step, micro)`` numbers micro-batches across the processes:
  process ``r`` of ``N`` takes every ``N``-th micro-batch of the epoch plan, so
  the shards are disjoint, and a 1-process run accumulating ``N`` times as many
  micro-batches per step sees exactly the same micro-batches and noise.

A single process is a world of one, and every call is then free.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from tuner.errors import TunerError

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig

__all__ = ["DistributedSection", "ProcessGroupError", "World", "process_group_kwargs", "on_main_process"]

T = TypeVar("T")


class DistributedSection(BaseModel):
    """How the processes of a multi-process run (``accelerate launch --num_processes N``) wait for each other."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    process_group_timeout: int = Field(
        1800,
        ge=10,
        le=7 * 24 * 3600,  # a week; torch keeps it in milliseconds in a C int
        description="Seconds a process waits for the others (a gradient sync, a barrier) before it stops with an"
        " error: bounds the wait when another process dies or hangs. The other processes wait at a barrier while"
        " the main process validates or writes a checkpoint, so keep it longer than the longest validation round."
        " Ignored in a single process.",
    )


class ProcessGroupError(TunerError):
    """Another process of the run died, hung or was stopped."""


class _Elsewhere:
    """What ``world.main(obj)`` gives a process that is not the main one: every call does nothing."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class World:
    """This process's place among the processes of the run (``rank`` of ``size``)."""

    rank: int = 0
    size: int = 1
    accelerator: Any = None
    # Where micro-batch numbering restarts after a resume: (step, global micro-batches before it).
    origin: tuple[int, int] = field(default=(0, 0))
    gradient_accumulation_steps: int = 1
    # A stop signal (`tuner.train.stop`): asked here; agreed by all when any process's flag reached the others.
    stop_asked: bool = False
    stop_agreed: bool = False

    @classmethod
    def of(cls, accelerator: Any, gradient_accumulation_steps: int = 1) -> World:
        world = cls(accelerator.process_index, accelerator.num_processes, accelerator)
        world.gradient_accumulation_steps = gradient_accumulation_steps
        if world.size > 1:
            from tuner.progress import mute

            if not world.is_main:
                mute()  # one process speaks for the run
        return world

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- who writes ----------------------------------------------------------

    def main(self, obj: T) -> T:
        """``obj`` on the main process; elsewhere a stand-in whose every method (and call) does nothing."""
        return obj if self.is_main else _Elsewhere()  # type: ignore[return-value]

    def main_first(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the main process, then on the others (which then find its files written)."""
        if self.size == 1:
            return fn(*args, **kwargs)
        if not self.is_main:
            self.barrier()
        try:
            return fn(*args, **kwargs)
        finally:
            if self.is_main:
                self.barrier()

    # -- waiting and sharing -------------------------------------------------

    def barrier(self) -> None:
        """Wait until every process is here (bounded by ``process_group_timeout``)."""
        if self.size > 1:
            with self.collective("a barrier"):
                self.accelerator.wait_for_everyone()

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's share of ``items``: every ``size``-th item from ``rank``; the shares are disjoint."""
        return list(items[self.rank :: self.size])

    def gather(self, items: list[T]) -> list[T]:
        """Every process's ``items``, concatenated in rank order, on every process."""
        if self.size == 1:
            return list(items)
        from accelerate.utils import gather_object

        with self.collective("gathering results"):
            return list(gather_object(items))

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over the processes; this process's stop flag travels with it (`should_stop`)."""
        if self.size == 1:
            return value
        import torch

        both = torch.stack([value.detach().float().reshape(()), value.new_tensor(float(self.stop_asked)).float()])
        with self.collective("averaging the loss"):
            loss, asked = self.accelerator.reduce(both, reduction="mean")
        self.stop_agreed = self.stop_agreed or bool(asked > 0)
        return loss

    def should_stop(self) -> bool:
        """Whether the run stops after this step: a signal here, or, with several processes, in any of them
        before the step's last collective (so all stop after the same step)."""
        return self.stop_asked if self.size == 1 else self.stop_agreed

    def all_finite(self, value: torch.Tensor) -> bool:
        """Whether ``value`` is finite on every process (so that all skip a step together, or none)."""
        import torch

        finite = bool(torch.isfinite(value.detach()).all())
        if self.size == 1:
            return finite
        flag = torch.tensor([0.0 if finite else 1.0], device=self.accelerator.device)
        with self.collective("checking the loss"):
            return float(self.accelerator.reduce(flag, reduction="sum")) == 0.0

    # -- which micro-batch ---------------------------------------------------

    def micro_index(self, step: int, micro: int) -> int:
        """The run-wide number of micro-batch ``micro`` of optimizer step ``step`` on this process."""
        first_step, before = self.origin
        return before + ((step - first_step) * self.gradient_accumulation_steps + micro) * self.size + self.rank

    def global_batch(self, batch_size: int) -> int:
        """Samples per optimizer step over all processes: batch size x processes x accumulation."""
        return batch_size * self.size * self.gradient_accumulation_steps

    def consumed(self, step: int) -> int:
        """Micro-batches all processes together have trained on when ``step`` steps are done."""
        first_step, before = self.origin
        return before + (step - first_step) * self.gradient_accumulation_steps * self.size

    def resume_at(self, step: int, consumed: int) -> None:
        """Continue the micro-batch numbering from a checkpoint taken after ``step`` steps and ``consumed`` micro-batches."""
        self.origin = (step, consumed)

    # -- failures ------------------------------------------------------------

    @contextlib.contextmanager
    def collective(self, what: str) -> Iterator[None]:
        """Turn a broken or timed-out process group into one line that says what happened."""
        try:
            yield
        except TunerError:
            raise
        except Exception as exc:
            raise self.lost(what, exc) from None

    @contextlib.contextmanager
    def guarded(self, what: str) -> Iterator[None]:
        """Like `collective`, for work that syncs with the others only inside (DDP's gradient all-reduce in a
        step): a failure of the process group becomes one line, any other error stays what it is."""
        try:
            yield
        except TunerError:
            raise
        except Exception as exc:
            if self.size > 1 and _group_failure(exc):
                raise self.lost(what, exc) from None
            raise

    def lost(self, what: str, exc: BaseException) -> ProcessGroupError:
        import re

        # gloo and NCCL start with a source location ("[.../pair.cc:537] Read error ..."): keep the words.
        text = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        first = text.split(". ")[0] or type(exc).__name__
        return ProcessGroupError(
            f"process {self.rank} of {self.size} stopped while {what}: another process died, hung or timed out"
            f" ({first[:200]}); the last complete checkpoint in output_dir is intact: resume from it"
        )


# What gloo and NCCL say when the other end of the process group is gone (a plain RuntimeError from DDP).
_GROUP_WORDS = ("gloo/", "nccl", "processgroup", "by peer", "c10d", "broken pipe", "connection refused")


def _group_failure(exc: BaseException) -> bool:
    """The error comes from the process group (another process died or the link broke), not from this process."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"DistError", "DistBackendError", "DistNetworkError", "DistStoreError"}:
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(word in text for word in _GROUP_WORDS)


def process_group_kwargs(config: RunConfig) -> list[Any]:
    """accelerate kwargs handlers for the run's process group (its timeout) and its DDP wrapper."""
    from datetime import timedelta

    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    seconds = config.section("distributed").process_group_timeout
    return [
        InitProcessGroupKwargs(timeout=timedelta(seconds=seconds)),
        # A micro-batch may leave some adapter without a gradient: a model with experts trains only
        # the experts its samples' noise levels fall to.
        DistributedDataParallelKwargs(find_unused_parameters=True),
    ]


def on_main_process() -> bool:
    """Whether this is the main process of the run (or the only one)."""
    from accelerate.state import PartialState

    return bool(PartialState().is_main_process)  # the state the run set up; a lone process is the main one

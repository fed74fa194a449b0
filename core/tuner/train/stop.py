"""Stopping a run on a signal: SIGTERM as Ctrl-C, in every process.

SLURM, Docker and Kubernetes send SIGTERM and wait a while (10 to 30 s) before they kill;
accelerate's launcher passes it on to every process of a run. Python's default for SIGTERM
ends the process on the spot, with nothing saved. During a run, SIGTERM and SIGINT (Ctrl-C)
both become `Interrupted`, and the run saves the step it reached before it ends, in one line,
with exit status 128 + the signal's number (143, 130).

A signal that arrives during an optimizer step takes effect once the step is counted and logged: a step cut
in the middle (the update applied, the step not yet counted) would save a state that no step
number describes. Asked again during the same step, seconds later, the run stops at once and keeps nothing
of that step. With several processes the stop must also come at the same step in all of
them, or the others would wait for it in their next collective: each process's flag travels
with the loss it already averages at the end of every step (`World.mean`), and all stop
after the step in which any of them was signalled. Outside a step (loading, caching,
validation, a checkpoint write) the signal stops the process at once: the state is whole.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuner.distributed import World

__all__ = ["Interrupted", "StopSignals"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A signal again within this many seconds is the same request arriving twice (SLURM signals the launcher and
# every process, and the launcher passes it on; a terminal's Ctrl-C reaches both too); later, it insists.
_AGAIN_AFTER = 2.0


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGTERM, Ctrl-C); its message is the one line the user sees.

    :ivar signum: the signal's number (the exit status is ``128 + signum``).
    :ivar whole: the training state is at a step boundary, so the step reached can be saved.
    :ivar agreed: every process of the run stops after the same step (they may wait for each other).
    """

    def __init__(self, signum: int, message: str = "", *, whole: bool = True, agreed: bool = False) -> None:
        self.signum, self.whole, self.agreed = signum, whole, agreed
        super().__init__(message or f"stopped by {signal.Signals(signum).name}")

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """SIGTERM and SIGINT handlers for the lifetime of one run (installed on the main thread only)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.received: int | None = None
        self._in_step = False
        self._stopping = False
        self._previous: dict[int, Any] = {}
        self._first = 0.0

    def __enter__(self) -> StopSignals:
        for signum in _SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (embedded use): Python's defaults stay
                break
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:
            return  # already saving the step: the same signal again (a launcher passing it on) must not cut that short
        if self._in_step and self.received is not None and time.monotonic() - self._first > _AGAIN_AFTER:
            # Asked again during one step (Ctrl-C pressed again, a step that hangs): stop now, keeping
            # nothing of this step; the last checkpoint stands.
            self._stopping = True
            raise Interrupted(signum, whole=False)
        if self.received is None:
            self.received, self._first = signum, time.monotonic()
        self.world.stop_asked = True
        if not self._in_step:
            self._stopping = True
            raise Interrupted(signum)

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """One optimizer step: a signal during it waits for `after_step` (so the step is counted and logged)."""
        self._in_step = True
        try:
            yield
        except Exception:
            if self.received is None:
                raise
            # A step broken by the stop itself (another process already gone): nothing of it can be kept.
            self._stopping = True
            raise Interrupted(self.received, whole=False) from None
        finally:
            self._in_step = False

    def after_step(self) -> None:
        """Stop here if a signal came during the step (in this process; with several, in any of them in time)."""
        if self.world.should_stop():
            self._stopping = True
            raise Interrupted(self.received or signal.SIGTERM, agreed=self.world.size > 1)

    def check(self) -> None:
        """Stop now if a signal came and has not stopped the run yet (it came in the last step's closing lines)."""
        if self.received is not None and not self._stopping:
            self._stopping = True
            raise Interrupted(self.received)

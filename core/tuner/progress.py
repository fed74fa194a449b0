"""Progress bars (rich) for long work, plain lines off a terminal, or silence.

The log format (``log_format`` in ``[console]``) is set once per run with
`set_log_format`: ``auto`` shows rich bars on a terminal and about twenty plain
lines per task elsewhere; ``quiet`` and ``json`` print no progress at all (in
``json`` mode the run's events go to stdout as JSON lines instead).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tuner.errors import printable

__all__ = [
    "LogFormat",
    "console",
    "say",
    "shown",
    "notice",
    "set_log_format",
    "log_format",
    "mute",
    "task_progress",
    "stage",
    "eta_text",
    "TrainProgress",
]

LogFormat = Literal["auto", "quiet", "json"]
_FORMAT: ContextVar[str] = ContextVar("tuner_log_format", default="auto")
# Set in the processes of a multi-process run other than the main one: the main one speaks for the run.
_MUTED = False


def set_log_format(value: LogFormat) -> None:
    """Use ``value`` for the progress shown from now on in this thread of work."""
    _FORMAT.set(value)


def log_format() -> str:
    return "quiet" if _MUTED else _FORMAT.get()


def mute() -> None:
    """From now on this process prints no progress, no notices (errors still surface as exceptions)."""
    global _MUTED
    _MUTED = True


def console() -> Console:
    return Console(stderr=True, quiet=_MUTED)


def shown(value: object) -> str:
    """``value`` as text safe inside a console line: control characters escaped, rich markup (``[/]``) inert.

    File names come from the user's data: a name holding a newline, an escape sequence or
    square brackets must print as itself, on its line, and never break the console.
    """
    return escape(printable(str(value)))


def say(message: str) -> None:
    """One informational line (what was set up, how): shown in the ``auto`` log format only."""
    if log_format() == "auto":
        console().print(shown(message), highlight=False, soft_wrap=True)


def notice(message: str) -> None:
    """One line about something the user should know (an option ignored, a fallback taken): always shown."""
    if _MUTED:
        return
    console().print(f"[yellow]notice:[/] {shown(message)}", highlight=False, soft_wrap=True)


def eta_text(seconds: float) -> str:
    """``seconds`` left as a plain log line says it: ``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# Off a terminal a task prints a plain line when it moved 5% and PLAIN_GAP_S passed since the last line,
# or PLAIN_EVERY_S passed whatever it moved: about twenty lines for a long task, none for a quick one.
PLAIN_GAP_S = 2.0
PLAIN_EVERY_S = 10.0


@contextmanager
def stage(description: str) -> Iterator[None]:
    """One long step without a count (loading a component): ``description ...`` before, the seconds after.

    Shown in the ``auto`` log format, on a terminal and off it alike (plain lines either way).
    """
    if log_format() != "auto":
        yield
        return
    con = console()
    description = shown(description)  # it may name a user's folder
    con.print(f"{description} ...", highlight=False, soft_wrap=True)
    start = time.perf_counter()
    yield
    if (seconds := time.perf_counter() - start) >= 1.0:  # a quick stage needs no second line
        con.print(f"{description}: done in {seconds:.1f}s", highlight=False, soft_wrap=True)


@contextmanager
def task_progress(description: str, total: int, unit: str = "items") -> Iterator[Callable[[int], None]]:
    """A progress bar with a rate and the time left; yields ``advance(n)``.

    Off a terminal (a log file, a pipe) the same as plain lines, ``description:
    done/total unit, rate, ETA`` (when it moved 5% and `PLAIN_GAP_S` passed, or
    `PLAIN_EVERY_S` passed), then one closing line.
    """
    if log_format() != "auto":
        yield lambda n: None
        return
    con = console()
    start = time.perf_counter()
    if not con.is_terminal:
        with _plain_task(con, description, total, unit, start) as advance:
            yield advance
        return
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=con, transient=False, disable=not con.is_terminal) as progress:
        task = progress.add_task(description, total=total, rate="")
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            rate = done / max(1e-9, time.perf_counter() - start)
            progress.update(task, advance=n, rate=f"{rate:.1f} {unit}/s" if rate >= 1 else f"{1 / rate:.1f} s/{unit}")

        yield advance


@contextmanager
def _plain_task(con: Console, description: str, total: int, unit: str, start: float) -> Iterator[Callable[[int], None]]:
    description = shown(description)  # it may name a user's dataset
    done, said, last = 0, 0, start
    step = max(1, total // 20)

    def advance(n: int) -> None:
        nonlocal done, said, last
        done += n
        now = time.perf_counter()
        due = (done - said >= step and now - last >= PLAIN_GAP_S) or now - last >= PLAIN_EVERY_S
        if done >= total or not due:
            return  # the closing line says the end
        said, last = done, now
        rate = done / max(1e-9, now - start)
        one = unit[:-1] if unit.endswith("s") else unit
        speed = f"{rate:.1f} {unit}/s" if rate >= 1 else f"{1 / rate:.1f} s/{one}" if rate > 0 else ""
        left = f", ETA {eta_text((total - done) / rate)}" if rate > 0 and total else ""
        con.print(f"{description}: {done}/{total} {unit}, {speed}{left}", highlight=False, soft_wrap=True)

    yield advance
    con.print(f"{description}: {done}/{total} {unit} in {time.perf_counter() - start:.1f}s", highlight=False)


class TrainProgress:
    """The training bar: step, loss, lr, s/it and ETA.

    On a terminal it is a live bar; elsewhere (CI logs, pipes) it prints about
    twenty plain lines per run so logs stay readable; in ``quiet`` and ``json``
    modes it prints nothing.
    """

    def __init__(self, total: int, start: int) -> None:
        self.console = console()
        self.total, self.start = total, start
        self.silent = log_format() != "auto"
        self.live = self.console.is_terminal and not self.silent
        self.every = max(1, (total - start) // 20)
        self.progress = Progress(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.live,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, stats="")
        self._shown = 0.0  # perf_counter() of the last update shown
        self._began = time.perf_counter()  # the plain lines' ETA: the average step of this run so far

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def update(self, step: int, logs: dict[str, float]) -> None:
        skipped = bool(logs.get("skipped"))
        printing = not self.live and not self.silent and (step % self.every == 0 or step == self.total or skipped)
        # Called every step: a line not due, or a live bar redrawn less often than it is updated (rich
        # redraws at 10 Hz), costs nothing to skip.
        now = time.perf_counter()
        if not printing and not (self.live and (now - self._shown >= 0.1 or step == self.total or skipped)):
            return
        self._shown = now
        stats = f"loss {logs['loss']:.4f}  lr {logs['lr']:.2e}  {logs['step_time']:.3f} s/it"
        if "eval_loss" in logs:
            stats += f"  eval {logs['eval_loss']:.4f}"
        if skipped:  # NaN loss or fp16 overflow: no update this step (off a terminal: a line of its own)
            stats += "  update skipped" + (f" (loss scale now {logs['loss_scale']:g})" if "loss_scale" in logs else "")
        self.progress.update(self.task, completed=step, stats=stats)
        if printing:
            # Off a terminal the line carries what the live bar shows on the right: the time left.
            done = max(1, step - self.start)
            left = (now - self._began) / done * (self.total - step)
            self.console.print(f"step {step}/{self.total}  {stats}  ETA {eta_text(left)}")

    def note(self, message: str) -> None:
        if not self.silent:
            self.console.print(shown(message), highlight=False, soft_wrap=True)

"""How a command ends on an error: one ``error: ...`` line and the exit status a shell expects, never a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from tuner.errors import TunerError, printable

__all__ = ["fail", "friendly_errors"]

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {printable(message)}", err=True)  # one line, whatever file name it quotes
    return typer.Exit(code=code)


def friendly_errors(fn: F) -> F:
    """Turn a `TunerError`, a full disk wherever it is met, or a stop by a signal into one 'error: ...' line.

    The exit status is 2, or 128 + the signal's number for SIGTERM and Ctrl-C (143, 130), as a shell reports them.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt as exc:
            code = getattr(exc, "exit_code", 130)  # tuner.train.stop.Interrupted says which signal
            raise fail(str(exc) or "interrupted", code) from None
        except TunerError as exc:
            raise fail(str(exc)) from None
        except Exception as exc:  # OSError, or a writer's own type (safetensors' SafetensorError)
            from tuner.durable import disk_full_line, is_disk_full, refused_write_line

            if is_disk_full(exc):
                raise fail(disk_full_line(exc)) from None
            if (line := refused_write_line(exc)) is not None:
                raise fail(line) from None
            raise

    return wrapper  # type: ignore[return-value]

"""``tuner train --num-processes N``: a convenience that hands the run to accelerate's launcher.

It builds the ``accelerate launch`` command a user would type and runs it in this
process; accelerate starts ``N`` processes of ``python -m tuner train ...`` (the same
arguments, without ``--num-processes``). On a machine without GPUs the processes
talk over gloo on the CPU: ``accelerate launch --cpu`` would start only one, so the
launch asks for ``--multi_gpu`` with ``ACCELERATE_USE_CPU`` set instead.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

from tuner.errors import TunerError

__all__ = ["launch_arguments", "launch", "command_arguments"]


def _free_port() -> int:
    # Not accelerate's fixed default (29500): two runs on one machine would collide.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_arguments(
    num_processes: int, tuner_args: list[str], *, mixed_precision: str = "no", port: int | None = None
) -> list[str]:
    """The arguments of ``accelerate launch`` that start ``num_processes`` processes of ``tuner TUNER_ARGS``.

    ``mixed_precision`` only keeps accelerate from warning that it was not given: the run's own
    ``train.mixed_precision`` decides.
    """
    return [
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--dynamo_backend",
        "no",
        "--mixed_precision",
        mixed_precision,
        "--main_process_port",
        str(port or _free_port()),
        "--module",
        "tuner",
        *tuner_args,
    ]


def command_arguments(command: str, config: str, plugins: list[str] | None, sets: list[str] | None) -> list[str]:
    """The arguments each launched process runs: ``COMMAND --config FILE`` with the same plugins and overrides."""
    return [command, "--config", config, *(f"--plugin={p}" for p in plugins or []), *(f"--set={s}" for s in sets or [])]


def launch(num_processes: int, tuner_args: list[str], mixed_precision: str = "no") -> None:
    """Run ``tuner TUNER_ARGS`` in ``num_processes`` processes through accelerate's launcher."""
    import torch
    from accelerate.commands.launch import launch_command, launch_command_parser

    if not torch.cuda.is_available():
        os.environ["ACCELERATE_USE_CPU"] = "true"
    elif torch.cuda.device_count() < num_processes:
        raise TunerError(
            f"--num-processes {num_processes}: this machine has {torch.cuda.device_count()} GPU(s); start at most"
            " that many, or use accelerate launch with a config for several machines (docs/scale.md)"
        )
    args = launch_command_parser().parse_args(launch_arguments(num_processes, tuner_args, mixed_precision=mixed_precision))
    try:
        launch_command(args)
    except SystemExit as exc:  # accelerate exits 128 + N when this launcher was sent signal N (SIGTERM, Ctrl-C)
        code = exc.code if isinstance(exc.code, int) else 1
        if 128 < code < 128 + signal.NSIG:
            print(f"error: stopped by {signal.Signals(code - 128).name}: passed on to the {num_processes} processes,"
                  " which saved the step reached (see above)", file=sys.stderr)
        raise
    except Exception as exc:  # torch elastic's ChildFailedError: the processes printed their own lines above
        print(f"error: the run failed in one of its {num_processes} processes (see above): {type(exc).__name__}",
              file=sys.stderr)
        raise SystemExit(1) from None

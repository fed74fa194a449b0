"""``python toy_cli.py FOLDER OPTIONS_JSON``: a toy-family training run in a process of its own, as the CLI runs it.

``train()`` goes through the CLI's error handling (`tuner.commands.errors.friendly_errors`): the process ends
with the same one line and exit status as ``tuner train``. Options are ``[train]`` options, plus
``toy`` (the toy section) and ``file_size_limit`` (bytes: ``RLIMIT_FSIZE`` for the run).
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import typer

from tuner.commands.errors import friendly_errors
from tuner.config import resolve_config
from tuner.plugins import PluginHost
from tuner.testing.toy import ToyFamily, toy_config
from tuner.train.run import train


def main(folder: Path, options: dict) -> int:
    limit = options.pop("file_size_limit", 0)
    toy = options.pop("toy", {})
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    cfg = toy_config(folder, **options)
    cfg["toy"] = toy
    cfg["validation"]["validation_prompt"] = None
    if limit:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        friendly_errors(lambda: train(resolve_config(cfg, host), host))()
    except typer.Exit as exc:
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), json.loads(sys.argv[2])))

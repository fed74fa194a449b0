"""Config options typed as command-line flags after the config, as SimpleTuner users type them.

``tuner train --config my.toml --learning_rate 1e-4 --seed=3 --train.lora_rank 8`` is the same as
``--set learning_rate=1e-4 --set seed=3 --set train.lora_rank=8``: any option, flat (it lands in its
section) or dotted. A flag without a value (``--use_ema``) means true, as SimpleTuner's switches do.
"""

from __future__ import annotations

import re

from tuner.errors import ConfigError

__all__ = ["HELP", "option_overrides"]

HELP = (
    "Any config option may follow as --KEY VALUE or --KEY=VALUE (the same as --set KEY=VALUE), flat as the guide"
    " writes it or dotted: --learning_rate 1e-4, --train.lora_rank=8; a bare --KEY means true."
)
_KEY = re.compile(r"^[A-Za-z_][\w.-]*$")


def option_overrides(args: list[str]) -> list[str]:
    """``["--learning_rate", "1e-4", "--seed=3", "--use_ema"]`` -> ``["learning_rate=1e-4", "seed=3", "use_ema=true"]``."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or not _KEY.match(arg[2:].partition("=")[0]):
            raise ConfigError(
                f"unexpected argument '{arg}': options after the config are --KEY VALUE or --KEY=VALUE"
                " (e.g. --learning_rate 1e-4)"
            )
        key, sep, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not sep:
            following = args[i + 1] if i + 1 < len(args) else None
            if following is None or following.startswith("--"):
                value = "true"
            else:
                value, i = following, i + 1
        out.append(f"{key}={value}")
        i += 1
    return out

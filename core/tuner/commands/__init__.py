"""The subcommands `tuner.cli` registers, one module per subject, and the one way a command ends on an error.

``data`` (``tuner data preview``, ``tuner cache``), ``setup`` (``tuner configure``,
``tuner config import``), ``lora`` (``tuner lora info``, ``tuner lora convert``),
``errors`` (`friendly_errors`). Light to import: typer only; the work they start loads
inside the commands, so ``tuner --help`` stays quick.
"""

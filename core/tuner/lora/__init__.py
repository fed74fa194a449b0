"""Adapter files as other tools write them: reading any layout, converting between layouts, describing a file.

`tuner.lora.layouts` reads and writes the layouts, `tuner.lora.metadata` what every file
tuner writes says about itself; `tuner.commands.lora` holds
``tuner lora info`` and ``tuner lora convert``. A model family contributes only
how its original model names its modules (`tuner.lora.layouts.LoraNaming`,
through the ``lora_naming`` hook).
"""

from __future__ import annotations

__all__: list[str] = []

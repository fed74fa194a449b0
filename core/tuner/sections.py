"""The built-in plugin that registers the core's config sections and data backends.

``train``, ``data``, ``validation``, ``evaluation`` and ``distributed`` are registered through the same hook as
any plugin's section; each model lives beside the code that reads it. Option
names follow the Wan quickstart guide, so a user can also write them at the top
level of the config, as the guide does.
"""

from __future__ import annotations

from typing import Any

from tuner.data.settings import DataSection
from tuner.distributed import DistributedSection
from tuner.hookspecs import hookimpl
from tuner.train.settings import TrainSection
from tuner.validate.settings import EvaluationSection, ValidationSection

__all__ = ["register_config_sections", "register_data_backends"]


@hookimpl
def register_config_sections(register: Any) -> None:
    register("train", TrainSection)
    register("data", DataSection)
    register("validation", ValidationSection)
    register("evaluation", EvaluationSection)
    register("distributed", DistributedSection)


@hookimpl
def register_data_backends(register: Any) -> None:
    from tuner.data.local import LocalFiles
    from tuner.data.metadata import MetadataFiles

    register("local", LocalFiles())
    register("metadata", MetadataFiles())

"""Writing a run's trained adapter to disk: one file per trained expert, in the configured format and precision.

Each file carries its metadata (`tuner.lora.metadata`) and appears whole or not at all (written beside its
final name, then renamed); a full disk is a `CheckpointError` naming the space needed. The family's
``export_adapter`` hook writes the file when it has its own format; otherwise the native keys are saved.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.durable import disk_full_message, is_disk_full
from tuner.errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig
    from tuner.plugins import PluginHost
    from tuner.types.adapter import AdapterWeights
    from tuner.types.bundle import Expert, ModelBundle

__all__ = ["write_adapter_files"]


def write_adapter_files(
    host: PluginHost,
    config: RunConfig,
    bundle: ModelBundle,
    members: list[tuple[Expert, AdapterWeights]],
    path: Path,
    *,
    step: int | None,
    params: list[torch.nn.Parameter],
) -> dict[str, Path]:
    """Write each expert's weights beside ``path`` and return label -> file (the label is '' for a single adapter).

    ``path`` names the file of a single adapter; with several experts each file carries its expert's label
    (`tuner.train.adapters.adapter_file`). ``step`` is recorded as the steps trained; ``params`` are the
    trained parameters, whose size a full disk's message asks for.
    """
    from safetensors.torch import save_file

    from tuner.lora.metadata import adapter_metadata, ensure_metadata, native_metadata
    from tuner.train.adapters import adapter_file, export_format
    from tuner.train.precision import save_dtype

    dtype = save_dtype(config)
    written: dict[str, Path] = {}
    several = len(members) > 1
    lora_format = export_format(config.train.lora_format, bundle)
    for expert, weights in members:
        # Scalars (LyCORIS's alphas) keep their exact value: bf16 would turn an alpha of 10000 into 9984.
        weights.tensors = {k: v.to(dtype) if v.is_floating_point() and v.ndim else v for k, v in weights.tensors.items()}
        target = adapter_file(path, expert, several)
        if target.parent == Path(config.train.output_dir):  # the run's own adapter, not a checkpoint's
            from tuner.outputs import claim

            claim(target)
        tmp = target.with_name(f".{target.stem}.partial{target.suffix}")
        meta = adapter_metadata(config, bundle, expert, weights, lora_format=lora_format, path=target, step=step)
        try:
            if host.export_adapter(bundle, weights, tmp, lora_format, meta) is None:
                meta = native_metadata(meta, weights)
                save_file({k: v.contiguous() for k, v in weights.native().items()}, str(tmp), metadata=meta)
            ensure_metadata(tmp, meta)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)  # whatever stopped the write (safetensors' own error on a full disk too)
            if not is_disk_full(exc):
                raise
            needed = sum(p.numel() * p.element_size() for p in params)
            message = disk_full_message(target.name, target.parent, needed, "output_dir", exc)
            raise CheckpointError(message) from exc
        os.replace(tmp, target)
        written[expert.label or expert.name if several else ""] = target
    return written

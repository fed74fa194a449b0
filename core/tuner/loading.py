"""Loading a family's denoiser: a diffusers folder or hub id, or one ``.safetensors`` file.

Fine-tunes of a base model usually ship as a single ``.safetensors`` file holding
the transformer alone, with the key names of diffusers or of the original
repository (ComfyUI's too). Families call `load_denoiser` with their diffusers
model class; it builds the model from the base's config and loads the tensors
(diffusers names), or lets diffusers' ``from_single_file`` convert them
(original names). Also the small pieces every family's loader needs:
`subfolder_or_none` and `fingerprint`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["load_denoiser", "subfolder_or_none", "fingerprint"]


def subfolder_or_none(value: str | None) -> str | None:
    """A subfolder option's value, None for the root ('none', empty or unset)."""
    return None if value in (None, "", "none", "None") else value


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able ``parts`` (encoder configs, sources): a cache id."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_denoiser(
    model_class: Any,
    source: str,
    *,
    base: str,
    subfolder: str | None,
    dtype: torch.dtype,
    revision: str | None,
    option: str,
    diffusers_prefixes: tuple[str, ...],
    component: str = "transformer",
) -> Any:
    """A ``model_class`` (a diffusers model) from ``source``: a folder/hub id, or one ``.safetensors`` file.

    :param base: the base model (folder or hub id) whose ``component`` config a single file is built on.
    :param subfolder: where ``source``'s weights sit when it is a folder or hub id (None: its root).
    :param option: the config option that named ``source``, for the message when the file is missing.
    :param diffusers_prefixes: key prefixes only a file in diffusers' names has (its first block, say);
        any other file is taken to hold the original names and converted by ``from_single_file``.
    """
    if not source.endswith(".safetensors"):
        return model_class.from_pretrained(source, subfolder=subfolder, torch_dtype=dtype, revision=revision)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"{option}: no such file {path}")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        diffusers_names = any(k.startswith(diffusers_prefixes) for k in f.keys())
    if not diffusers_names:
        return model_class.from_single_file(str(path), config=base, subfolder=component, torch_dtype=dtype)
    from safetensors.torch import load_file

    model = model_class.from_config(model_class.load_config(base, subfolder=component, revision=revision))
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{path} does not match the base transformer config: "
            f"{len(missing)} missing, {len(unexpected)} unexpected keys (e.g. {(missing or unexpected)[0]})"
        )
    return model.to(dtype)

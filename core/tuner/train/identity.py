"""What a checkpoint was written for, and whether a run may resume from it.

A checkpoint's ``state.json`` records the run's identity: the model (family,
flavour and ModelSpec architecture the family names, the trained experts, the
denoiser's architecture, the features' own modules), the adapter (type, rank,
alpha, targets, or the LyCORIS options) and the optimizer. A resume whose run
differs stops in one line naming each difference. Where only the training
settings differ (alpha, optimizer) and the weights still fit, the line says how to
start afresh from the weights alone (``resume_weights_only``); a checkpoint of
another model never offers that, since its weights were trained for other weights.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuner.config import RunConfig
    from tuner.types.bundle import ModelBundle

__all__ = ["run_identity", "identity_differences", "model_differs", "resume_refusal"]


def _architecture(bundle: ModelBundle) -> str:
    """A short digest of each denoiser's public config (diffusers models carry one), else its frozen weights' shapes.

    Shapes only without a config: a quantized base may store its weights packed.
    """
    parts = []
    for module in bundle.denoisers():
        config = getattr(module, "config", None)
        if isinstance(config, dict):
            shape = json.dumps({k: v for k, v in dict(config).items() if not str(k).startswith("_")}, sort_keys=True, default=str)
        else:  # the adapter's own parameters (trainable) are left out: they are the adapter's facts
            shape = json.dumps([[n, list(p.shape)] for n, p in module.named_parameters() if not p.requires_grad])
        parts.append([type(module).__name__, shape])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def run_identity(config: RunConfig, bundle: ModelBundle, lycoris_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The identity this run records in its checkpoints (JSON-able).

    :param lycoris_options: the LyCORIS config file's contents, for ``lora_type = 'lycoris'``.
    """
    tc = config.train
    model = {
        "family": bundle.family,
        "flavour": bundle.flavour,
        "base_architecture": bundle.architecture,
        "experts": [f"{e.name}:{e.label}:{e.sigma_range[0]:g}-{e.sigma_range[1]:g}" for e in bundle.trained_experts()],
        "architecture": _architecture(bundle),
        "features": sorted(bundle.run.trainables),
    }
    targets = sorted(tc.lora_target_modules or bundle.lora_target_modules)
    if tc.lora_type == "lycoris":
        adapter: dict[str, Any] = {"type": "lycoris", "targets": targets, "options": json.dumps(lycoris_options or {}, sort_keys=True)}
    else:
        alpha = tc.lora_alpha if tc.lora_alpha is not None else float(tc.lora_rank)
        adapter = {"type": "standard", "rank": tc.lora_rank, "alpha": float(alpha), "targets": targets}
    return {"model": model, "adapter": adapter, "optimizer": {"name": tc.optimizer}, "base_model": bundle.base_model}


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flat(inner, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def identity_differences(saved: Any, now: dict[str, Any]) -> list[str]:
    """``"model.flavour: 'a' there, 'b' here"`` for each recorded fact that differs (``base_model`` is only shown)."""
    saved_flat = _flat(saved) if isinstance(saved, dict) else {}
    out = []
    for key, value in _flat(now).items():
        if key == "base_model":
            continue  # a model folder moved elsewhere is the same model: the facts above tell
        there = saved_flat.get(key, "(not recorded)")
        if there != value:
            out.append(f"{key}: {there!r} there, {value!r} here"[:300])
    return out


def model_differs(differences: list[str]) -> bool:
    """Some difference is of the model itself: its weights do not belong on this one."""
    return any(d.startswith("model.") for d in differences)


def resume_refusal(saved: Any, now: dict[str, Any], weights_only: bool, fits: bool) -> str | None:
    """Why a checkpoint with identity ``saved`` cannot resume this run (``now``), or ``None``.

    :param weights_only: ``resume_weights_only``: only the model must match.
    :param fits: the checkpoint's trainable tensors have this run's shapes.
    """
    differences = identity_differences(saved, now)
    if not differences or (weights_only and not model_differs(differences)):
        return None
    if model_differs(differences):
        fix = "its weights belong to another model: resume it with that model, or start afresh without it"
    elif fits:
        fix = (
            "resume with the settings it was written with, or set train.resume_weights_only = true to start"
            " afresh from its adapter weights (step 0, a new optimizer and schedule)"
        )
    else:
        fix = "resume with the settings it was written with, or start afresh"
    return f"was written for another run ({'; '.join(differences)}): {fix}"

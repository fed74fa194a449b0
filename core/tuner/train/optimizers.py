"""Optimizers by name: torch, torch-optimi, Prodigy and bitsandbytes.

Each name maps to a builder; availability is checked before anything trains,
so a missing package or a CUDA-only optimizer on a CPU fails at start-up with
one line saying what to use instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tuner.errors import ConfigError, PluginError

if TYPE_CHECKING:
    import torch

    from tuner.train.settings import TrainSection

__all__ = ["OPTIMIZERS", "check_optimizer", "build_optimizer", "adapter_dtype"]


def _optimi(cls_name: str, **fixed: Any) -> Callable[..., Any]:
    def build(params: list[torch.nn.Parameter], tc: TrainSection) -> Any:
        import optimi

        cls = getattr(optimi, cls_name)
        kwargs: dict[str, Any] = {"lr": tc.learning_rate, "weight_decay": tc.adam_weight_decay, **fixed}
        if cls_name not in ("SGD",):
            kwargs["betas"] = (tc.adam_beta1, tc.adam_beta2)
        if cls_name not in ("SGD", "Lion"):
            kwargs["eps"] = tc.adam_epsilon
        if cls_name in ("Adan",):
            kwargs["betas"] = (tc.adam_beta1, 0.92, tc.adam_beta2)
        return cls(params, **kwargs)

    return build


def _torch_adamw(params: list[torch.nn.Parameter], tc: TrainSection) -> Any:
    import torch

    return torch.optim.AdamW(
        params, lr=tc.learning_rate, betas=(tc.adam_beta1, tc.adam_beta2), weight_decay=tc.adam_weight_decay, eps=tc.adam_epsilon
    )


def _prodigy(params: list[torch.nn.Parameter], tc: TrainSection) -> Any:
    from prodigyopt import Prodigy

    return Prodigy(
        params, lr=tc.learning_rate, betas=(tc.adam_beta1, tc.adam_beta2), weight_decay=tc.adam_weight_decay, eps=tc.adam_epsilon
    )


def _bnb(cls_name: str) -> Callable[..., Any]:
    def build(params: list[torch.nn.Parameter], tc: TrainSection) -> Any:
        import bitsandbytes.optim as bnb_optim

        cls = getattr(bnb_optim, cls_name)
        return cls(params, lr=tc.learning_rate, betas=(tc.adam_beta1, tc.adam_beta2), weight_decay=tc.adam_weight_decay)

    return build


# name -> (builder, python package it needs, needs CUDA)
OPTIMIZERS: dict[str, tuple[Callable[..., Any], str | None, bool]] = {
    "adamw": (_torch_adamw, None, False),
    # Kahan summation keeps bf16 weights from losing small updates.
    "adamw_bf16": (_optimi("AdamW", kahan_sum=True), "optimi", False),
    "optimi-adamw": (_optimi("AdamW"), "optimi", False),
    "optimi-adam": (_optimi("Adam"), "optimi", False),
    "optimi-lion": (_optimi("Lion"), "optimi", False),
    "optimi-stableadamw": (_optimi("StableAdamW"), "optimi", False),
    "optimi-radam": (_optimi("RAdam"), "optimi", False),
    "optimi-ranger": (_optimi("Ranger"), "optimi", False),
    "optimi-adan": (_optimi("Adan"), "optimi", False),
    "optimi-sgd": (_optimi("SGD"), "optimi", False),
    "prodigy": (_prodigy, "prodigyopt", False),
    "bnb-adamw8bit": (_bnb("AdamW8bit"), "bitsandbytes", True),
    "bnb-adamw8bit-paged": (_bnb("PagedAdamW8bit"), "bitsandbytes", True),
    "bnb-lion8bit": (_bnb("Lion8bit"), "bitsandbytes", True),
    "bnb-lion8bit-paged": (_bnb("PagedLion8bit"), "bitsandbytes", True),
}


def check_optimizer(name: str, device_type: str) -> None:
    """Fail now, in one line, if ``name`` cannot run here."""
    import importlib.util

    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer '{name}'; choose one of {', '.join(OPTIMIZERS)}")
    _, package, needs_cuda = OPTIMIZERS[name]
    if needs_cuda and device_type != "cuda":
        raise PluginError(
            f"optimizer '{name}' needs bitsandbytes on a CUDA GPU and this run is on {device_type}:"
            " use 'optimi-lion' or 'adamw_bf16' for a low-memory optimizer here"
        )
    if package and importlib.util.find_spec(package) is None:
        pip_name = {"optimi": "torch-optimi"}.get(package, package)
        raise PluginError(f"optimizer '{name}' needs the {pip_name} package: pip install {pip_name}")


def adapter_dtype(name: str) -> str | None:
    """The dtype the adapter weights are stored in for this optimizer (None: keep float32)."""
    return "bfloat16" if name == "adamw_bf16" else None


def build_optimizer(name: str, params: list[torch.nn.Parameter], tc: TrainSection) -> Any:
    builder, _, _ = OPTIMIZERS[name]
    return builder(params, tc)

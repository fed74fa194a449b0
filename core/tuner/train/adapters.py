"""Attaching, reading and restoring the trained adapter (peft LoRA)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["ADAPTER_NAME", "attach_lora", "adapter_state_dict", "load_adapter_state", "trainable_parameters"]

ADAPTER_NAME = "default"


def attach_lora(
    model: torch.nn.Module, targets: list[str], rank: int, alpha: float | None, dropout: float
) -> list[torch.nn.Parameter]:
    """Inject LoRA layers into ``model`` on the modules named by ``targets``; return the new parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    from tuner.errors import ConfigError

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        lora_dropout=dropout,
        target_modules=targets,
        init_lora_weights=True,
    )
    try:
        inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    except ValueError as exc:
        raise ConfigError(f"train.lora_target_modules {targets} match no module of the model: {exc}") from None
    params = trainable_parameters(model)
    if not params:
        raise ConfigError(f"train.lora_target_modules {targets} created no trainable parameters")
    return params


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def adapter_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights with peft's names, without the adapter-name suffix."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME).items()}


def load_adapter_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state, adapter_name=ADAPTER_NAME)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        from tuner.errors import CheckpointError

        raise CheckpointError(f"checkpoint adapter does not fit this model (e.g. {unexpected[0]})")

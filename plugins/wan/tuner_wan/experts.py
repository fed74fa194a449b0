"""Wan 2.2 A14B's two noise experts: which to load, their noise ranges, and which validation samples with.

diffusers' convention (kept here and in the docs): `transformer` is the
high-noise expert and denoises timesteps ``t >= boundary_ratio * 1000``,
`transformer_2` the low-noise one below it. A ``-high`` run trains
`transformer` on sigmas in ``[boundary, 1]`` only, a ``-low`` run
`transformer_2` on ``[0, boundary)``: each expert only ever sees the noise
levels it will denoise at inference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuner.errors import ConfigError

from tuner_wan.flavours import EXPERT_COMPONENTS

if TYPE_CHECKING:
    import torch

    from tuner.types.bundle import Expert

    from tuner_wan.flavours import Flavour
    from tuner_wan.settings import WanSection

__all__ = [
    "EXPERT_LABELS",
    "trained_experts",
    "loaded_experts",
    "boundary_ratio",
    "make_experts",
    "validation_transformers",
    "single_stage_note",
]

EXPERT_LABELS = {"high": "high_noise", "low": "low_noise"}


def trained_experts(flavour: Flavour, section: WanSection) -> list[str]:
    """``["high"]``, ``["low"]`` or both: the experts this run trains."""
    if flavour.expert is None:
        return []
    return ["high", "low"] if section.wan_train_both_experts else [flavour.expert]


def loaded_experts(flavour: Flavour, section: WanSection) -> list[str]:
    """The experts to load: the trained ones, plus the other one when validation samples both stages."""
    trained = trained_experts(flavour, section)
    if section.wan_validation_load_other_stage and trained:
        return ["high", "low"]
    return trained


def boundary_ratio(section: WanSection, model_index: dict[str, Any], base: str) -> float:
    """The expert switch as a fraction of the training timesteps: the option, else ``model_index.json``'s."""
    if section.wan_boundary_ratio is not None:
        return section.wan_boundary_ratio
    value = model_index.get("boundary_ratio")
    if not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ConfigError(
            f"wan.model_flavour = '{section.model_flavour}' has two experts, but {base}/model_index.json gives no"
            " boundary_ratio between 0 and 1: set wan.wan_boundary_ratio (0.9 for I2V A14B, 0.875 for T2V A14B)"
        )
    return float(value)


def make_experts(modules: dict[str, torch.nn.Module], trained: list[str], boundary: float) -> list[Expert]:
    """One `Expert` per loaded expert (``"high"``/``"low"`` -> module), high first, as the pipeline orders them."""
    from tuner.types.bundle import Expert

    ranges = {"high": (boundary, 1.0), "low": (0.0, boundary)}
    return [
        Expert(
            name=EXPERT_COMPONENTS[which],
            module=modules[which],
            sigma_range=ranges[which],
            trained=which in trained,
            label=EXPERT_LABELS[which],
            # diffusers loads into `transformer` unless told otherwise (FACTS.md).
            load_kwargs={"load_into_transformer_2": True} if EXPERT_COMPONENTS[which] == "transformer_2" else {},
        )
        for which in ("high", "low")
        if which in modules
    ]


def validation_transformers(experts: list[Expert], single: torch.nn.Module) -> dict[str, Any]:
    """The transformer arguments of the validation pipeline.

    Both experts loaded: diffusers' two-stage sampler (`transformer` above the
    boundary, `transformer_2` below). One expert: it denoises every step.
    """
    if len(experts) == 2:
        high, low = experts
        return {"transformer": high.module, "transformer_2": low.module, "boundary_ratio": high.sigma_range[0]}
    return {"transformer": experts[0].module if experts else single}


def single_stage_note(flavour_name: str, experts: list[Expert]) -> str | None:
    """What a validation clip of one expert shows, said once at start-up; None when both stages run."""
    if len(experts) != 1:
        return None
    expert = experts[0]
    low, high = expert.sigma_range
    return (
        f"validation of {flavour_name} runs the {expert.label.replace('_', '-')} expert alone over every sampler"
        f" step (it was trained for sigma in [{low:g}, {high:g}]), so clips will not look like the final two-stage"
        " output: set wan_validation_load_other_stage = true to sample with both experts"
    )

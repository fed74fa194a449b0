"""Attaching the trained adapter (peft LoRA or LyCORIS) and reading its weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from tuner.train.settings import TrainSection
    from tuner.types import AdapterWeights, Expert, ModelBundle

__all__ = ["ADAPTER_NAME", "Adapter", "AdapterSet", "attach_adapter", "attach_adapters", "adapter_file", "matching_modules"]

ADAPTER_NAME = "default"


def matching_modules(model: torch.nn.Module, targets: list[str]) -> list[str]:
    """Full names of the modules whose name is, or ends with, one of ``targets`` (peft's rule)."""
    return [name for name, _ in model.named_modules() if any(name == t or name.endswith("." + t) for t in targets)]


class Adapter:
    """The trainable part of a run: its parameters and a way to read them by module."""

    kind = "lora"

    def __init__(self, model: torch.nn.Module, params: list[torch.nn.Parameter]) -> None:
        self.model = model
        self.params = params

    def weights(self) -> AdapterWeights:
        raise NotImplementedError


class PeftLora(Adapter):
    kind = "lora"

    def __init__(self, model: torch.nn.Module, tc: TrainSection, targets: list[str]) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        if not matching_modules(model, targets):
            raise ConfigError(f"train.lora_target_modules {targets} match no module of the model")
        self.alpha = tc.lora_alpha if tc.lora_alpha is not None else float(tc.lora_rank)
        self.rank = tc.lora_rank
        config = LoraConfig(
            r=tc.lora_rank, lora_alpha=self.alpha, lora_dropout=tc.lora_dropout, target_modules=targets, init_lora_weights=True
        )
        inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
        super().__init__(model, [p for p in model.parameters() if p.requires_grad])

    def weights(self) -> AdapterWeights:
        from peft.utils import get_peft_model_state_dict

        from tuner.types import AdapterWeights

        tensors = {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model, adapter_name=ADAPTER_NAME).items()}
        weights = AdapterWeights(kind="lora", tensors=tensors)
        for module in weights.modules():
            weights.alphas[module] = self.alpha
            weights.ranks[module] = self.rank
        return weights


class Lycoris(Adapter):
    kind = "lycoris"

    def __init__(self, model: torch.nn.Module, tc: TrainSection, targets: list[str]) -> None:
        from lycoris import LycorisNetwork, create_lycoris

        options = _read_lycoris_config(tc.lycoris_config)
        preset = options.pop("apply_preset", None) or {"target_name": matching_modules(model, targets)}
        multiplier = float(options.pop("multiplier", 1.0))
        linear_dim = int(options.pop("linear_dim", tc.lora_rank))
        linear_alpha = float(options.pop("linear_alpha", tc.lora_alpha or 1.0))
        # LyCORIS keeps its preset on the class; set it for this run every time.
        LycorisNetwork.apply_preset(preset)
        try:
            self.network = create_lycoris(model, multiplier, linear_dim=linear_dim, linear_alpha=linear_alpha, **options)
        except (TypeError, ValueError, KeyError) as exc:
            raise ConfigError(f"train.lycoris_config {tc.lycoris_config}: {exc}") from None
        if not self.network.loras:
            raise ConfigError(f"train.lycoris_config {tc.lycoris_config} matches no module of the model")
        self.network.apply_to()
        self.network.to(next(model.parameters()).device)
        names = {f"lycoris_{name.replace('.', '_')}": name for name, _ in model.named_modules()}
        self.module_names = {lora.lora_name: names[lora.lora_name] for lora in self.network.loras}
        super().__init__(model, [p for p in self.network.parameters() if p.requires_grad])

    def weights(self) -> AdapterWeights:
        from tuner.types import AdapterWeights

        tensors = {}
        for key, value in self.network.state_dict().items():
            lora_name, param = key.split(".", 1)
            tensors[f"{self.module_names[lora_name]}.{param}"] = value.detach().clone()
        return AdapterWeights(kind="lycoris", tensors=tensors)


def _read_lycoris_config(path: Path | None) -> dict[str, Any]:
    from tuner.jsonfile import read_json

    if path is None:
        raise ConfigError("train.lycoris_config: not set")
    options = read_json(Path(path), what="train.lycoris_config", error=ConfigError)
    if not isinstance(options, dict) or "algo" not in options:
        raise ConfigError(f"train.lycoris_config {path}: expected an object with at least 'algo' (e.g. \"lokr\")")
    return options


def attach_adapter(model: torch.nn.Module, tc: TrainSection, targets: list[str]) -> Adapter:
    """Attach the configured adapter to ``model``; its parameters are the only trainable ones."""
    adapter: Adapter = Lycoris(model, tc, targets) if tc.lora_type == "lycoris" else PeftLora(model, tc, targets)
    if not adapter.params:
        raise ConfigError(f"the adapter on {targets} has no trainable parameters")
    return adapter


class AdapterSet:
    """The adapters of a run: one per trained expert (one for a single denoiser).

    The optimizer, EMA and checkpoints see `params`, the concatenation in
    expert order; export writes one file per expert (`adapter_file`).
    """

    def __init__(self, members: list[tuple[Expert, Adapter]]) -> None:
        self.members = members
        self.params = [p for _, adapter in members for p in adapter.params]

    @property
    def kind(self) -> str:
        return self.members[0][1].kind

    def weights(self) -> list[tuple[Expert, AdapterWeights]]:
        return [(expert, adapter.weights()) for expert, adapter in self.members]


def adapter_file(path: Path, expert: Expert, several: bool) -> Path:
    """Where ``expert``'s adapter goes when ``path`` names the run's adapter file.

    One trained expert keeps ``path``; with several, each file carries the
    expert's label: ``pytorch_lora_weights_high_noise.safetensors``.
    """
    if not several:
        return path
    return path.with_name(f"{path.stem}_{expert.label or expert.name}{path.suffix}")


def attach_adapters(bundle: ModelBundle, tc: TrainSection, targets: list[str]) -> AdapterSet:
    """Attach the configured adapter to every trained expert of ``bundle``."""
    return AdapterSet([(expert, attach_adapter(expert.module, tc, targets)) for expert in bundle.trained_experts()])

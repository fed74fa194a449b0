"""Attaching the trained adapter (peft LoRA or LyCORIS) and reading its weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from tuner.train.settings import TrainSection
    from tuner.types.adapter import AdapterWeights
    from tuner.types.bundle import Expert, ModelBundle

__all__ = [
    "ADAPTER_NAME",
    "Adapter",
    "AdapterSet",
    "attach_adapter",
    "attach_adapters",
    "adapter_file",
    "export_format",
    "final_adapter_files",
    "matching_modules",
    "preset_targets_unmatched",
]

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

        from tuner.types.adapter import AdapterWeights

        tensors = {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model, adapter_name=ADAPTER_NAME).items()}
        weights = AdapterWeights(kind="lora", tensors=tensors)
        for module in weights.modules():
            weights.alphas[module] = self.alpha
            weights.ranks[module] = self.rank
        return weights


class Lycoris(Adapter):
    kind = "lycoris"

    def __init__(self, model: torch.nn.Module, tc: TrainSection, targets: list[str]) -> None:
        import re

        from lycoris import LycorisNetwork, create_lycoris

        options = _read_lycoris_config(tc.lycoris_config)
        self.options = dict(options)  # as written: checkpoints record it (tuner.train.identity)
        preset = options.pop("apply_preset", None)
        if preset is not None and not isinstance(preset, dict):
            raise ConfigError(f"train.lycoris_config {tc.lycoris_config}: apply_preset must be an object")
        self.preset = preset
        # Without a preset, exactly the modules LoRA would adapt: no class (LyCORIS's default adapts every
        # Linear and Conv by class), and each name matched whole.
        names = {"target_module": [], "target_name": [re.escape(n) + "$" for n in matching_modules(model, targets)]}
        multiplier = float(options.pop("multiplier", 1.0))
        linear_dim = int(options.pop("linear_dim", tc.lora_rank))
        linear_alpha = float(options.pop("linear_alpha", tc.lora_alpha or 1.0))
        try:
            # LyCORIS keeps its preset on the class and a preset sets only the keys it names: start each run
            # from LyCORIS's defaults so that nothing of an earlier run in this process carries over.
            LycorisNetwork.apply_preset({**_LYCORIS_PRESET_DEFAULTS, **(preset or names)})
            self.network = create_lycoris(model, multiplier, linear_dim=linear_dim, linear_alpha=linear_alpha, **options)
        except (TypeError, ValueError, KeyError) as exc:
            raise ConfigError(f"train.lycoris_config {tc.lycoris_config}: {exc}") from None
        if not self.network.loras:
            raise ConfigError(f"train.lycoris_config {tc.lycoris_config} matches no module of the model")
        device = next(model.parameters()).device  # before apply_to: algo "full" takes the layers' weights over
        self.network.apply_to()
        self.network.to(device)
        names_by_lora = {f"lycoris_{name.replace('.', '_')}": name for name, _ in model.named_modules()}
        self.module_names = {lora.lora_name: names_by_lora[lora.lora_name] for lora in self.network.loras}
        self.config_path = tc.lycoris_config
        super().__init__(model, [p for p in self.network.parameters() if p.requires_grad])

    def coverage(self) -> tuple[str, bool] | None:
        """What an ``apply_preset`` adapts: ``(message, worth a notice)``, or None without a preset.

        A preset written for another model's class or module names quietly
        adapts a fraction of the layers (or none of those it names): a notice
        says so when a target matched nothing or under half the linear layers
        are adapted.
        """
        import torch

        if not self.preset:
            return None
        linear = {n for n, m in self.model.named_modules() if isinstance(m, torch.nn.Linear)}
        adapted = sum(name in linear for name in self.module_names.values())
        unmatched = preset_targets_unmatched(self.model, self.preset)
        message = f"train.lycoris_config {self.config_path}: apply_preset adapts {adapted} of {len(linear)} linear layers"
        if unmatched:
            message += "; matched no module: " + ", ".join(unmatched)
        return message, bool(unmatched) or adapted < len(linear) / 2

    def weights(self) -> AdapterWeights:
        from tuner.types.adapter import AdapterWeights

        tensors = {}
        for key, value in self.network.state_dict().items():
            lora_name, param = key.split(".", 1)
            tensors[f"{self.module_names[lora_name]}.{param}"] = value.detach().clone()
        return AdapterWeights(kind="lycoris", tensors=tensors)


# LyCORIS's own preset defaults (lycoris.wrapper.LycorisNetwork's class attributes); the module names
# above assume the "lycoris" prefix.
_LYCORIS_PRESET_DEFAULTS: dict[str, Any] = {
    "enable_conv": True,
    "target_module": ["Linear", "Conv1d", "Conv2d", "Conv3d", "GroupNorm", "LayerNorm"],
    "target_name": [],
    "module_algo_map": {},
    "name_algo_map": {},
    "use_fnmatch": False,
    "exclude_name": [],
    "lora_prefix": "lycoris",
}


def preset_targets_unmatched(model: torch.nn.Module, preset: dict[str, Any]) -> list[str]:
    """The ``target_module`` classes and ``target_name`` patterns of a LyCORIS preset that match no module.

    Classes match a module's class name; names match a module path whole or as
    LyCORIS matches them (a regular expression from the start, or a glob with
    ``use_fnmatch``). Each unmatched class comes with the closest class the
    model has.
    """
    import fnmatch
    import re

    from tuner.errors import did_you_mean

    modules = dict(model.named_modules())
    classes = {type(m).__name__ for m in modules.values()}
    out = []
    for cls in [*preset.get("target_module", []), *preset.get("module_algo_map", {})]:
        if cls not in classes:
            out.append(f"target_module '{cls}'{did_you_mean(cls, classes)}")

    def matches(pattern: str, name: str) -> bool:
        if preset.get("use_fnmatch"):
            return fnmatch.fnmatch(name, pattern)
        try:
            return bool(re.match(pattern, name))
        except re.error:
            return False

    for pattern in [*preset.get("target_name", []), *preset.get("name_algo_map", {})]:
        if not any(name == pattern or matches(pattern, name) for name in modules):
            out.append(f"target_name '{pattern}'")
    return out


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

    @property
    def lycoris_options(self) -> dict[str, Any] | None:
        """The LyCORIS config file's contents (the same on every expert), or ``None`` for a LoRA."""
        adapter = self.members[0][1]
        return adapter.options if isinstance(adapter, Lycoris) else None

    def coverage(self) -> tuple[str, bool] | None:
        """What a LyCORIS preset adapts (the same config on every expert: said once), see `Lycoris.coverage`."""
        adapter = self.members[0][1]
        return adapter.coverage() if isinstance(adapter, Lycoris) else None


def adapter_file(path: Path, expert: Expert, several: bool) -> Path:
    """Where ``expert``'s adapter goes when ``path`` names the run's adapter file.

    One trained expert keeps ``path``; with several, each file carries the
    expert's label: ``pytorch_lora_weights_high_noise.safetensors``.
    """
    if not several:
        return path
    return path.with_name(f"{path.stem}_{expert.label or expert.name}{path.suffix}")


def final_adapter_files(tc: TrainSection) -> tuple[str, str]:
    """The names of the run's final adapter file and its EMA twin in ``output_dir`` (``output_name``, else diffusers')."""
    from tuner.train.checkpoints import ADAPTER_FILE

    stem = tc.output_name or Path(ADAPTER_FILE).stem
    return f"{stem}.safetensors", f"{stem}_ema.safetensors"


def attach_adapters(bundle: ModelBundle, tc: TrainSection, targets: list[str]) -> AdapterSet:
    """Attach the configured adapter to every trained expert of ``bundle``."""
    return AdapterSet([(expert, attach_adapter(expert.module, tc, targets)) for expert in bundle.trained_experts()])


def export_format(lora_format: str, bundle: ModelBundle) -> str:
    """The key layout exported files get: ``lora_format``, with ``"auto"`` the family's `ModelBundle.auto_lora_format`."""
    from tuner.errors import PluginError

    if lora_format != "auto":
        return lora_format
    if bundle.auto_lora_format not in ("diffusers", "comfyui"):
        raise PluginError(
            f"model family '{bundle.family}' names auto_lora_format '{bundle.auto_lora_format}':"
            " expected 'diffusers' or 'comfyui'"
        )
    return bundle.auto_lora_format

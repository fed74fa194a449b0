"""``init_lora``: a run's adapter starts from an existing adapter file instead of fresh weights.

The file may come from any trainer, in any layout `tuner.lora.layouts` reads.
Its modules and ranks are checked against the adapter the config attached: a
rank that differs, or modules this model does not have, stop the run with one
line; modules the run adapts and the file lacks start fresh (said in the line).
The weights are copied as they are, so the run starts exactly at the file's
adapter (the first export before any step equals the source). When the file's
alpha / rank differs from the run's, ``lora_B`` is rescaled so the adapter adds
the same delta.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tuner.errors import ConfigError

if TYPE_CHECKING:
    from tuner.lora.layouts import LoraFile, LoraNaming
    from tuner.train.adapters import Adapter, AdapterSet
    from tuner.types.bundle import Expert

__all__ = ["init_from_file", "expert_file"]

WHAT = "train.init_lora"


def expert_file(path: Path, expert: Expert, experts: list[Expert]) -> Path:
    """The file ``expert`` starts from: ``path`` itself with one trained expert; with several, the one made for it.

    A file is made for an expert when its metadata says so (``tuner.expert``)
    or, failing that, its name carries the expert's label where ``path``'s
    carries another's (``..._high_noise`` -> ``..._low_noise``).
    """
    from tuner.lora.metadata import read_metadata

    if len(experts) == 1:
        return path
    for candidate in [path, *sorted(path.parent.glob("*.safetensors"))]:
        if candidate.is_file() and read_metadata(candidate).get("tuner.expert") == expert.name:
            return candidate
    for other in experts:
        if other.label and other.label in path.name:
            swapped = path.with_name(path.name.replace(other.label, expert.label))
            if swapped.is_file():
                return swapped
    raise ConfigError(
        f"{WHAT} {path}: this run trains {len(experts)} experts and no file beside it is made for {expert.name}"
        f" ({expert.label}): put each expert's file in one folder (tuner's metadata or a _{expert.label} name tells them"
        " apart)"
    )


def init_from_file(adapters: AdapterSet, path: Path, rank: int, alpha: float, namings: dict[str, LoraNaming]) -> list[str]:
    """Load ``path`` (or each expert's file) into ``adapters``; one line per expert on what matched."""
    from tuner.lora.layouts import read_adapter

    experts = [e for e, _ in adapters.members]
    lines = []
    for expert, adapter in adapters.members:
        file = expert_file(Path(path), expert, experts)
        if not file.is_file():
            raise ConfigError(f"{WHAT} {file}: no such file")
        modules = {name for name, _ in adapter.model.named_modules()}
        source = read_adapter(file, namings, modules=modules, what=WHAT)
        line = _load(adapter, source, rank, alpha)
        made_for = source.metadata.get("tuner.expert")
        if made_for and experts[0].name != "denoiser" and made_for != expert.name:
            line += f"; note: it was trained for {made_for}, not {expert.name} ({expert.label})"
        lines.append(line)
    return lines


def _load(adapter: Adapter, source: LoraFile, rank: int, alpha: float) -> str:
    import torch

    weights = source.weights
    name = source.path.name
    if weights.kind != adapter.kind:
        fix = "lora_type = 'lycoris' with its lycoris_config" if weights.kind == "lycoris" else "lora_type = 'standard'"
        raise ConfigError(f"{WHAT} {name} is a {weights.kind} adapter and this run trains {adapter.kind}: set {fix}")
    current = adapter.weights()
    run_modules, file_modules = set(current.modules()), set(weights.modules())
    extra = sorted(file_modules - run_modules)
    if extra:
        raise ConfigError(
            f"{WHAT} {name} adapts {len(extra)} modules this run does not (e.g. '{extra[0]}'): add them to"
            " lora_target_modules, or start from a file made for these targets"
        )
    ranks = {r for m, r in weights.ranks.items()}
    if weights.kind == "lora" and ranks != {rank}:
        raise ConfigError(
            f"{WHAT} {name} has rank {', '.join(map(str, sorted(ranks)))} and train.lora_rank is {rank}:"
            f" set lora_rank = {max(ranks)}"
        )
    params = dict(adapter.model.named_parameters()) if weights.kind == "lora" else {}
    state = adapter.network.state_dict() if weights.kind == "lycoris" else {}  # type: ignore[attr-defined]
    lora_names = {m: n for n, m in getattr(adapter, "module_names", {}).items()}
    rescaled = set()
    lycoris_state = {}
    with torch.no_grad():
        for key, value in weights.tensors.items():
            module = weights.module_of(key)
            param = key[len(module) + 1 :]
            if weights.kind == "lora":
                target = params[f"{module}.{param.replace('.', '.default.', 1)}"]
            else:
                target = state[f"{lora_names[module]}.{param}"]
            if tuple(target.shape) != tuple(value.shape):
                raise ConfigError(
                    f"{WHAT} {name}: '{module}' {param} is {tuple(value.shape)}, this model's is {tuple(target.shape)}:"
                    " a file for another model (or another size of it)"
                )
            if param == "lora_B.weight":
                factor = (weights.alphas[module] / weights.ranks[module]) / (alpha / rank)
                if factor != 1.0:
                    rescaled.add(f"{factor:g}")
                    value = value.double() * factor
            if weights.kind == "lora":
                target.copy_(value.to(target.dtype))
            else:  # LyCORIS's state dict is not always its parameters (a LoKr rescales w1): load it its way
                lycoris_state[f"{lora_names[module]}.{param}"] = value.to(target.dtype)
        if lycoris_state:
            adapter.network.load_state_dict(lycoris_state, strict=False)  # type: ignore[attr-defined]
    kind = f"{weights.kind} rank {rank}" if weights.kind == "lora" else weights.kind
    line = (
        f"{WHAT} {name} ({source.layout} layout, {kind}): {len(file_modules)} of the {len(run_modules)} adapted"
        " modules start from it"
    )
    if len(file_modules) < len(run_modules):
        line += f", {len(run_modules) - len(file_modules)} start fresh"
    if rescaled:
        line += f"; lora_B scaled by {'/'.join(sorted(rescaled))} to keep the file's alpha / rank under lora_alpha {alpha:g}"
    return line

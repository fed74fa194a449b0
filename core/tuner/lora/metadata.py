"""What an exported adapter file says about itself: its safetensors metadata.

Every adapter file tuner writes carries three conventions at once, so that each
tool shows what it knows (see docs/adapters.md for the full key list):

* kohya/musubi's ``ss_*`` keys (``ss_network_module``, ``ss_network_dim``,
  ``ss_network_alpha``, ``ss_network_args``, ``ss_base_model_version``,
  ``ss_sd_model_name``, ``ss_output_name``, ``ss_steps``, ``ss_max_train_steps``,
  ``ss_resolution``, ...), which ComfyUI's LoRA managers, A1111-style UIs and
  Civitai read;
* Stability's ModelSpec ``modelspec.*`` keys (``sai_model_spec``,
  ``architecture``, ``implementation``, ``title``, ``resolution``,
  ``trigger_phrase``, ``timestep_range``, ...);
* diffusers' ``lora_adapter_metadata``: the peft ``LoraConfig`` under the
  ``transformer.`` prefix, which ``load_lora_weights`` builds the adapter from.
  It describes the tensors as diffusers holds them after loading, with alpha /
  rank already applied (diffusers folds a file's ``.alpha`` into the weights
  when it converts the original names): ``lora_alpha`` equals ``r``.

plus tuner's own ``tuner.*`` keys (family, flavour, expert, layout), which
``tuner lora info`` and ``init_lora`` read back. Nothing secret goes in (no
webhook, token or prompt library), and no local path: a local base model is
named by its folder name only. No timestamp either: a resumed run writes the
same bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuner.config import RunConfig
    from tuner.types.adapter import AdapterWeights
    from tuner.types.bundle import Expert, ModelBundle

__all__ = [
    "SPEC_KEY",
    "DIFFUSERS_KEY",
    "adapter_metadata",
    "read_metadata",
    "ensure_metadata",
    "native_metadata",
    "diffusers_metadata",
    "peft_config",
    "base_model_name",
]

SPEC_KEY = "modelspec.sai_model_spec"
DIFFUSERS_KEY = "lora_adapter_metadata"
# diffusers' loaders read the denoiser's adapter config under its component prefix; every transformer
# pipeline (and `load_into_transformer_2`) uses "transformer".
_DIFFUSERS_PREFIX = "transformer"


def base_model_name(base: str) -> str:
    """A hub id as it is; a local folder or file by its name alone (no local path leaves the machine)."""
    if not base:
        return ""
    path = Path(base)
    if path.is_absolute() or path.exists() or base.startswith((".", "~")):
        return path.name
    return base


def _ranks_alphas(weights: AdapterWeights) -> tuple[int | None, float | None]:
    """The most common rank and alpha (kohya's single ``network_dim``/``network_alpha``)."""
    rank = Counter(weights.ranks.values()).most_common(1)
    alpha = Counter(weights.alphas.values()).most_common(1)
    return (rank[0][0] if rank else None), (alpha[0][0] if alpha else None)


def peft_config(weights: AdapterWeights, *, folded: bool = True) -> dict[str, Any]:
    """peft's ``LoraConfig`` of ``weights``.

    ``folded``: as diffusers holds them after loading a ``diffusers`` or
    ``comfyui`` file, alpha / rank applied to the weights (``lora_alpha == r``);
    otherwise with the trained alphas (peft's own layout, nothing folded).
    """
    from peft import LoraConfig

    rank, alpha = _ranks_alphas(weights)
    assert rank is not None
    alphas = {m: float(weights.ranks[m]) for m in weights.ranks} if folded else weights.alphas
    common_alpha = float(rank) if folded else float(alpha if alpha is not None else rank)
    config = LoraConfig(
        r=rank,
        lora_alpha=common_alpha,
        target_modules=weights.modules(),
        rank_pattern={m: r for m, r in weights.ranks.items() if r != rank},
        alpha_pattern={m: a for m, a in alphas.items() if a != common_alpha},
    ).to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}


def adapter_metadata(
    config: RunConfig,
    bundle: ModelBundle,
    expert: Expert,
    weights: AdapterWeights,
    *,
    lora_format: str,
    path: Path,
    step: int | None,
) -> dict[str, str]:
    """The metadata of one exported adapter file (all values strings, as safetensors stores them)."""
    from tuner import __version__

    tc = config.train
    rank, alpha = _ranks_alphas(weights)
    base = base_model_name(bundle.base_model)
    architecture = bundle.architecture or bundle.family
    side = int(config.data.resolution) if config.data.resolution_type != "area" else 0
    triggers = ", ".join(tc.trigger_words)
    low, high = expert.sigma_range
    lycoris: dict[str, Any] = {}
    if weights.kind == "lycoris" and tc.lycoris_config is not None:
        from tuner.jsonfile import read_json

        lycoris = {k: v for k, v in read_json(Path(tc.lycoris_config), what="train.lycoris_config").items() if k != "apply_preset"}
    meta: dict[str, Any] = {
        # kohya-ss sd-scripts / musubi-tuner
        "ss_network_module": "lycoris.kohya" if weights.kind == "lycoris" else "networks.lora",
        "ss_network_dim": rank if rank is not None else lycoris.get("linear_dim", tc.lora_rank),
        # What a kohya reader should scale by: the diffusers layout has alpha / rank folded in (scale 1).
        "ss_network_alpha": (float(rank) if lora_format == "diffusers" and rank else alpha)
        if alpha is not None
        else lycoris.get("linear_alpha", tc.lora_alpha or 1.0),
        "ss_network_args": json.dumps(lycoris),
        "ss_base_model_version": architecture,
        "ss_sd_model_name": base,
        "ss_output_name": path.stem,
        "ss_steps": step,
        "ss_max_train_steps": tc.max_train_steps or None,
        "ss_resolution": f"({side}, {side})" if side else None,
        "ss_learning_rate": tc.learning_rate,
        "ss_lr_scheduler": tc.lr_scheduler,
        "ss_optimizer": tc.optimizer,
        "ss_seed": tc.seed,
        "ss_mixed_precision": tc.mixed_precision,
        "ss_training_comment": f"trained with tuner {__version__}",
        # Stability ModelSpec 1.0
        SPEC_KEY: "1.0.0",
        "modelspec.architecture": f"{architecture}/{'lycoris' if weights.kind == 'lycoris' else 'lora'}",
        "modelspec.implementation": "diffusers" if lora_format == "diffusers" else (bundle.implementation or "diffusers"),
        "modelspec.title": path.stem,
        "modelspec.resolution": f"{side}x{side}" if side else None,
        "modelspec.trigger_phrase": triggers or None,
        "modelspec.timestep_range": f"{round(low * 1000)},{round(high * 1000)}" if (low, high) != (0.0, 1.0) else None,
        "modelspec.tags": ", ".join(filter(None, ["lora", bundle.family, bundle.flavour])),
        "modelspec.license": bundle.license or None,  # the base model's: an adapter of it is bound by it
        # tuner's own
        "tuner.version": __version__,
        "tuner.family": bundle.family,
        "tuner.flavour": bundle.flavour or None,
        "tuner.base_model": base,
        "tuner.adapter_type": weights.kind,
        "tuner.layout": lora_format,
        "tuner.rank": rank,
        "tuner.alpha": alpha,
        "tuner.target_modules": json.dumps(sorted({_leaf(m) for m in weights.modules()})),
        "tuner.expert": expert.name if bundle.experts else None,
        "tuner.expert_label": expert.label or None,
        # What diffusers' load_lora_weights needs to put it in the right denoiser (load_into_transformer_2=True).
        "tuner.load_kwargs": json.dumps(expert.load_kwargs, sort_keys=True) if expert.load_kwargs else None,
        "tuner.steps": step,
        "tuner.trigger_words": json.dumps(tc.trigger_words) if tc.trigger_words else None,
    }
    if weights.kind == "lora":
        meta[DIFFUSERS_KEY] = diffusers_metadata(weights)
    return {k: str(v) for k, v in meta.items() if v is not None}


def _leaf(module: str) -> str:
    """``blocks.3.attn1.to_q`` -> ``attn1.to_q``: the name inside a block, as lora_target_modules names it."""
    parts = module.split(".")
    return ".".join(parts[2:]) if len(parts) > 2 and parts[1].isdigit() else module


def read_metadata(path: Path) -> dict[str, str]:
    """The file's safetensors metadata (the header only; no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def native_metadata(metadata: dict[str, str], weights: AdapterWeights) -> dict[str, str]:
    """``metadata`` for a file in the adapter library's own names (nothing folded, no ``.alpha`` tensors)."""
    out = {**metadata, "tuner.layout": "peft" if weights.kind == "lora" else "lycoris"}
    if weights.kind == "lora":
        out[DIFFUSERS_KEY] = diffusers_metadata(weights, folded=False)
    return out


def diffusers_metadata(weights: AdapterWeights, *, folded: bool = True) -> str:
    """diffusers' ``lora_adapter_metadata`` value: `peft_config` under the denoiser's prefix, as JSON."""
    config = peft_config(weights, folded=folded)
    return json.dumps({f"{_DIFFUSERS_PREFIX}.{k}": v for k, v in config.items()}, indent=2, sort_keys=True)


def ensure_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Add ``metadata`` to a file a family's exporter wrote without it (an exporter older than the argument).

    The family's own keys win over ours where both are set (its ``format``, say).
    """
    from safetensors.torch import load_file, save_file

    present = read_metadata(path)
    if SPEC_KEY in present:
        return
    save_file(load_file(str(path)), str(path), metadata={**metadata, **present})

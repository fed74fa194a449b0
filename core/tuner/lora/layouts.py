"""Reading an adapter file in any layout other trainers write, and writing it in another.

Layouts, by their keys (``<module>`` in the denoiser's diffusers names unless said):

* ``diffusers``: ``transformer.<module>.lora_A.weight`` / ``lora_B.weight``, alpha
  folded in (diffusers, SimpleTuner, ai-toolkit);
* ``peft``: ``<module>.lora_A.weight`` (or under ``base_model.model.``), alpha
  in diffusers' ``lora_adapter_metadata`` when there is one;
* ``comfyui``: ``diffusion_model.<original>.lora_A.weight`` (or ``lora_down``/
  ``lora_up``) with ``.alpha``: the original model's module names, which ComfyUI
  maps (ComfyUI's own saves, tuner's default for Wan);
* ``kohya``: ``lora_unet_<original, dots as underscores>.lora_down.weight`` /
  ``lora_up.weight`` / ``.alpha`` (kohya sd-scripts, musubi-tuner);
* ``lycoris``: ``lycoris_<module, dots as underscores>.lokr_w1`` and the like
  (LyCORIS's own names; SimpleTuner's LyCORIS files).

The original names are the family's: it maps them through a `LoraNaming`
(the ``lora_naming`` hook); everything else here is the same for any family.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from tuner.types.adapter import AdapterWeights

__all__ = ["LAYOUTS", "LoraNaming", "LoraFile", "read_adapter", "layout_tensors", "converted_metadata", "write_adapter"]

LAYOUTS = ("diffusers", "comfyui", "kohya", "peft", "lycoris")
_PREFIXES = {"diffusers": "transformer.", "peft": "base_model.model.", "comfyui": "diffusion_model.", "kohya": "lora_unet_", "lycoris": "lycoris_"}
# Parameter names after the module, longest first so that "lora_A.weight" wins over "weight".
_PARAMS = sorted(
    ["lora_A.weight", "lora_B.weight", "lora_down.weight", "lora_up.weight", "lora_mid.weight", "lora_A.bias",
     "lora_B.bias", "alpha", "dora_scale", "diff", "diff_b", "lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b",
     "lokr_w2_a", "lokr_w2_b", "lokr_t2", "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"],
    key=len, reverse=True,
)  # fmt: skip
_KOHYA_PARAMS = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}


@dataclass(frozen=True)
class LoraNaming:
    """How a model family's original model names the modules an adapter changes.

    :ivar to_original: a module path inside the denoiser, in its diffusers
        names (``blocks.3.attn1.to_q``) -> the original model's name
        (``blocks.3.self_attn.q``); raises ``ValueError`` for a module without one.
    :ivar from_original: the inverse; raises ``ValueError`` for an unknown name.
    :ivar loads_in: layout -> where a file in that layout loads, in a few words
        (``tuner lora info`` shows it).
    :ivar comfyui_tensors: writes the ``comfyui`` layout when the family needs
        more than the original names (which modules may carry ``.alpha``);
        ``None``: original names, with ``.alpha`` on every module.
    """

    to_original: Callable[[str], str]
    from_original: Callable[[str], str]
    loads_in: dict[str, str] = field(default_factory=dict)
    comfyui_tensors: Callable[[AdapterWeights], dict[str, torch.Tensor]] | None = None


@dataclass
class LoraFile:
    """An adapter file, read: its layout, its weights under the denoiser's names, its metadata."""

    path: Path
    layout: str
    weights: AdapterWeights
    metadata: dict[str, str]
    family: str | None
    ignored: list[str] = field(default_factory=list)


def _mapped(fn: Callable[[str], str], name: str) -> str | None:
    try:
        return fn(name)
    except (ValueError, KeyError):
        return None


def _undo_underscores(name: str, accept: Callable[[str], str | None]) -> str | None:
    """``blocks_0_self_attn_q`` -> the dotted name ``accept`` knows (``blocks.0.self_attn.q``), trying each split."""
    parts = name.split("_")
    if len(parts) > 16:  # 2**15 candidates: no real module name has that many underscores
        return None
    for joins in itertools.product(("_", "."), repeat=len(parts) - 1):
        candidate = parts[0] + "".join(j + p for j, p in zip(joins, parts[1:]))
        found = accept(candidate)
        if found is not None:
            return found
    return None


def _split(body: str, underscored: bool) -> tuple[str, str]:
    if underscored:
        module, _, param = body.partition(".")
        return module, param
    for param in _PARAMS:
        if body.endswith("." + param):
            return body[: -len(param) - 1], param
    raise ConfigError(f"'{body}' is not an adapter tensor (no lora_A/lora_B/lora_down/lora_up/alpha/LyCORIS parameter)")


def _layout_of(keys: list[str]) -> str:
    counts = {name: sum(k.startswith(p) for k in keys) for name, p in _PREFIXES.items()}
    best = max(counts, key=lambda n: counts[n])
    return best if counts[best] else "peft"


def read_adapter(
    path: Path, namings: dict[str, LoraNaming], *, modules: set[str] | None = None, what: str = "adapter file"
) -> LoraFile:
    """Read ``path`` (``.safetensors`` only: nothing is unpickled) in whichever layout it has.

    :param namings: family -> its `LoraNaming`, for the layouts in original names.
    :param modules: the denoiser's module names, when a model is at hand: names
        are then checked against it rather than against the families' namings.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from tuner.lora.metadata import DIFFUSERS_KEY, read_metadata
    from tuner.types.adapter import AdapterWeights

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"{what} {path}: only .safetensors files are read (a pickled .bin/.pt is never loaded)")
    try:
        tensors = load_file(str(path))
        metadata = read_metadata(path)
    except (OSError, SafetensorError) as exc:
        raise ConfigError(f"{what} {path}: cannot be read as safetensors ({exc})") from None
    layout = _layout_of(list(tensors))
    prefix = _PREFIXES[layout] if layout != "peft" or any(k.startswith(_PREFIXES["peft"]) for k in tensors) else ""
    ignored = [k for k in tensors if not k.startswith(prefix)]
    raw: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix):
            module, param = _split(key[len(prefix) :], layout in ("kohya", "lycoris"))
            raw.setdefault(module, {})[{"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight"}.get(param, param)] = value
    if not raw:
        raise ConfigError(f"{what} {path}: holds no adapter tensor")
    family, names = _module_names(path, layout, list(raw), namings, modules, metadata, what)
    kind = "lora" if all(p.startswith(("lora_", "alpha")) for ps in raw.values() for p in ps) else "lycoris"
    weights = AdapterWeights(kind=kind, tensors={})
    peft = json.loads(metadata[DIFFUSERS_KEY]) if DIFFUSERS_KEY in metadata else {}
    for module, params in raw.items():
        name = names[module]
        for param, value in params.items():
            if param != "alpha" or kind == "lycoris":
                weights.tensors[f"{name}.{param}"] = value
        if kind == "lora":
            if "lora_A.weight" not in params or "lora_B.weight" not in params:
                raise ConfigError(f"{what} {path}: module '{module}' lacks its lora_A/lora_down or lora_B/lora_up tensor")
            weights.ranks[name] = int(params["lora_A.weight"].shape[0])
            weights.alphas[name] = float(params["alpha"]) if "alpha" in params else _stored_alpha(peft, name, weights.ranks[name])
    return LoraFile(path, layout, weights, metadata, family, ignored)


def _stored_alpha(peft: dict[str, Any], module: str, rank: int) -> float:
    """The alpha diffusers' stored peft config gives ``module``; none stored: scale 1 (alpha = rank)."""
    pattern = peft.get("transformer.alpha_pattern") or {}
    if module in pattern:
        return float(pattern[module])
    if "transformer.lora_alpha" in peft and "transformer.r" in peft and not (peft.get("transformer.rank_pattern") or {}):
        return float(peft["transformer.lora_alpha"]) * rank / float(peft["transformer.r"])
    return float(rank)


def _module_names(
    path: Path,
    layout: str,
    found: list[str],
    namings: dict[str, LoraNaming],
    modules: set[str] | None,
    metadata: dict[str, str],
    what: str,
) -> tuple[str | None, dict[str, str]]:
    """The family the file's names belong to, and file module -> denoiser module.

    Each installed family is tried (the one the metadata names first); the
    first that maps every module wins. Names in the denoiser's own terms need
    no family when the model is at hand (``modules``).
    """
    order: list[str | None] = sorted(namings, key=lambda f: f != metadata.get("tuner.family"))
    if layout in ("diffusers", "peft", "lycoris") and modules is not None:
        order = [None]

    def resolver(naming: LoraNaming | None) -> Callable[[str], str | None]:
        def own(name: str) -> str | None:  # a name in the denoiser's (diffusers) terms
            if modules is not None:
                return name if name in modules else None
            return name if naming is not None and _mapped(naming.to_original, name) is not None else None

        def original(name: str) -> str | None:
            module = _mapped(naming.from_original, name) if naming is not None else None
            return module if module is not None and (modules is None or module in modules) else None

        return {
            "diffusers": own,
            "peft": own,
            "lycoris": lambda n: _undo_underscores(n, own),
            "comfyui": original,
            "kohya": lambda n: _undo_underscores(n, original),
        }[layout]

    best: tuple[int, dict[str, str]] = (-1, {})
    for family in order:
        resolve = resolver(namings[family] if family is not None else None)
        names = {m: n for m in found if (n := resolve(m)) is not None}
        if len(names) == len(found):
            return family or metadata.get("tuner.family"), names
        best = max(best, (len(names), names), key=lambda b: b[0])
    if layout in ("diffusers", "peft") and modules is None:
        return metadata.get("tuner.family"), {m: m for m in found}  # no installed family knows them: as they are
    missing = [m for m in found if m not in best[1]]
    where = "this model's modules" if modules is not None else f"in any installed model family ({', '.join(namings) or 'none'})"
    raise ConfigError(
        f"{what} {path}: {len(missing)} of its {len(found)} modules (e.g. '{missing[0]}') are not {where}:"
        " a file for another model"
    )


def layout_tensors(weights: AdapterWeights, layout: str, naming: LoraNaming | None) -> dict[str, torch.Tensor]:
    """``weights`` under ``layout``'s names (see the module docstring)."""
    import torch

    if layout == "lycoris" or (weights.kind == "lycoris" and layout == "peft"):
        return weights.native() if weights.kind == "lycoris" else _refuse(weights, layout)
    if layout == "peft":
        return dict(weights.tensors)
    if layout == "diffusers":
        if weights.kind != "lora":
            _refuse(weights, layout)
        return {_PREFIXES["diffusers"] + k: v for k, v in weights.scale_baked().items()}
    if naming is None:
        raise ConfigError(f"the {layout} layout uses the original model's names, and no installed family names this file's")
    if layout == "comfyui" and naming.comfyui_tensors is not None:
        return naming.comfyui_tensors(weights)
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.tensors.items():
        module = weights.module_of(key)
        param = key[len(module) + 1 :]
        original = naming.to_original(module)
        if layout == "kohya":
            out[f"{_PREFIXES['kohya']}{original.replace('.', '_')}.{_KOHYA_PARAMS.get(param, param)}"] = value
        else:
            out[f"{_PREFIXES['comfyui']}{original}.{param}"] = value
    for module, alpha in weights.alphas.items():
        original = naming.to_original(module)
        name = original.replace(".", "_") if layout == "kohya" else original
        out[f"{_PREFIXES[layout]}{name}.alpha"] = torch.tensor(float(alpha))
    return out


def _refuse(weights: AdapterWeights, layout: str) -> dict[str, torch.Tensor]:
    raise ConfigError(f"a {weights.kind} adapter has no {layout} layout: convert it --to comfyui or kohya")


def converted_metadata(source: LoraFile, layout: str) -> dict[str, str]:
    """The source's metadata, re-described for ``layout`` (its own keys kept, the layout-bound ones redone)."""
    from tuner.lora.metadata import DIFFUSERS_KEY, SPEC_KEY, diffusers_metadata

    weights = source.weights
    meta = {k: v for k, v in source.metadata.items() if k not in (DIFFUSERS_KEY, "format")}
    rank = max(weights.ranks.values(), default=0)
    meta.setdefault("ss_network_module", "networks.lora" if weights.kind == "lora" else "lycoris.kohya")
    if rank:
        # The diffusers layout folds alpha / rank into the weights: what it stores is scale 1.
        alpha = float(rank) if layout == "diffusers" else weights.alphas[next(m for m, r in weights.ranks.items() if r == rank)]
        meta.update({"ss_network_dim": str(rank), "ss_network_alpha": str(alpha)})
    meta.setdefault(SPEC_KEY, "1.0.0")
    meta["tuner.layout"] = layout
    if weights.kind == "lora":
        meta[DIFFUSERS_KEY] = diffusers_metadata(weights, folded=layout != "peft")
    return meta


def write_adapter(source: LoraFile, out: Path, layout: str, naming: LoraNaming | None) -> Path:
    """Write ``source`` to ``out`` in ``layout``, atomically."""
    import os

    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in layout_tensors(source.weights, layout, naming).items()}
    tmp = out.with_name(f".{out.name}.partial")
    save_file(tensors, str(tmp), metadata=converted_metadata(source, layout))
    os.replace(tmp, out)
    return out

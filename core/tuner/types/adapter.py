"""Trained adapter weights, as the core hands them to `export_adapter` and the LoRA tools."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["AdapterWeights"]

_SUBMODULE_PARAMS = {"lora_A", "lora_B", "lora_down", "lora_up", "lora_mid", "a1", "a2", "b1", "b2"}
# A LoKr module's tensors when neither factor is low-rank (LyCORIS's "full matrix" mode).
_FULL_KRONECKER = {"lokr_w1", "lokr_w2", "dora_scale"}


@dataclass
class AdapterWeights:
    """Trained adapter weights, named by the module they modify.

    :ivar kind: ``"lora"`` (peft) or ``"lycoris"``.
    :ivar tensors: ``"<module path>.<param>"`` -> tensor, e.g.
        ``blocks.0.attn1.to_q.lora_A.weight`` or ``blocks.0.attn1.to_q.lokr_w1``.
    :ivar alphas: LoRA only: module path -> alpha (the branch is scaled by alpha / rank).
    :ivar ranks: LoRA only: module path -> rank.
    """

    kind: str
    tensors: dict[str, torch.Tensor]
    alphas: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)

    def modules(self) -> list[str]:
        """Module paths in first-seen order."""
        seen: dict[str, None] = {}
        for key in self.tensors:
            seen[self.module_of(key)] = None
        return list(seen)

    def module_of(self, key: str) -> str:
        # Parameters that are themselves a submodule's weight (peft's lora_A, LyCORIS's LoCon and GLoRA).
        if key.endswith(".weight") and key.rsplit(".", 2)[1] in _SUBMODULE_PARAMS:
            return key.rsplit(".", 2)[0]
        return key.rsplit(".", 1)[0]

    def scale_baked(self) -> dict[str, torch.Tensor]:
        """LoRA tensors with alpha / rank folded into ``lora_B``, for loaders that assume scale 1."""
        out = dict(self.tensors)
        for module, alpha in self.alphas.items():
            scale = alpha / self.ranks[module]
            if scale != 1.0:
                key = f"{module}.lora_B.weight"
                out[key] = (out[key].float() * scale).to(out[key].dtype)  # one rounding for a bf16/fp16 save_dtype
        return out

    def idle_alphas(self) -> set[str]:
        """Modules whose stored ``alpha`` scales nothing: a LyCORIS LoKr with both Kronecker factors full.

        LyCORIS then stores ``alpha = linear_dim`` (10000 in common configs) and
        applies scale 1, while a loader that divides the alpha by some rank of
        its own would scale the delta far off. An exporter leaves these alphas
        out: every loader applies scale 1 to a module without one.
        """
        params: dict[str, set[str]] = {}
        for key in self.tensors:
            module = self.module_of(key)
            params.setdefault(module, set()).add(key[len(module) + 1 :])
        return {m for m, p in params.items() if "alpha" in p and p - {"alpha"} <= _FULL_KRONECKER}

    def native(self) -> dict[str, torch.Tensor]:
        """The adapter library's own layout: peft names for LoRA, ``lycoris_a_b_c.param`` for LyCORIS."""
        if self.kind != "lycoris":
            return dict(self.tensors)
        return {
            f"lycoris_{self.module_of(k).replace('.', '_')}.{k.rsplit('.', 1)[1]}": v for k, v in self.tensors.items()
        }

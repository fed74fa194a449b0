"""The Wan models a user picks with ``model_flavour``, under the names the quickstart guide uses.

A flavour names a diffusers-layout repository and what its transformers do:
the task (text-to-video, image-to-video, first-last-frame, the 5B TI2V) and,
for the Wan 2.2 A14B pairs, which noise expert a run trains. Everything that
depends on the flavour reads it from here, never from the flavour's spelling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["Flavour", "FLAVOURS", "DEFAULT_FLAVOUR", "EXPERT_COMPONENTS", "unknown_flavour"]

Task = Literal["t2v", "i2v", "flf2v", "ti2v"]
Expert = Literal["high", "low"]

# diffusers' convention for the Wan 2.2 A14B pipelines: `transformer` denoises the
# high-noise steps (t >= boundary_ratio * num_train_timesteps), `transformer_2` the rest.
EXPERT_COMPONENTS: dict[str, str] = {"high": "transformer", "low": "transformer_2"}
DEFAULT_FLAVOUR = "t2v-480p-1.3b-2.1"


@dataclass(frozen=True)
class Flavour:
    """One trainable Wan model.

    :ivar repo: the diffusers-layout hub repository loaded when no path is given.
    :ivar task: ``t2v``, ``i2v`` (first frame), ``flf2v`` (first and last frame)
        or ``ti2v`` (Wan 2.2 5B: text or first frame, per-token timesteps).
    :ivar version: ``"2.1"`` or ``"2.2"``.
    :ivar expert: for the two-expert Wan 2.2 A14B models, the expert the run
        trains by default (``high`` or ``low``); ``None`` for one-transformer models.
    :ivar summary: one line for the docs.
    :ivar fps: the frame rate the model is trained and sampled at (its model card): 16 for
        Wan 2.1 and the 2.2 A14B models, 24 for Wan 2.2 TI2V-5B.
    """

    repo: str
    task: Task
    version: str
    expert: Expert | None = None
    summary: str = ""
    fps: float = 16.0

    @property
    def conditioned(self) -> bool:
        """Whether the transformer takes image conditioning (a first, or first and last, frame)."""
        return self.task in ("i2v", "flf2v")

    @property
    def architecture(self) -> str:
        """The ModelSpec-style id adapter files name: the repository's name, lower case (``wan2.2-t2v-a14b``)."""
        name = self.repo.rsplit("/", 1)[-1].lower()
        return name[: -len("-diffusers")] if name.endswith("-diffusers") else name

    @property
    def two_experts(self) -> bool:
        return self.expert is not None


FLAVOURS: dict[str, Flavour] = {
    "t2v-480p-1.3b-2.1": Flavour(
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "t2v", "2.1", summary="Wan 2.1 text-to-video, 1.3B, 480p"
    ),
    "t2v-480p-14b-2.1": Flavour(
        "Wan-AI/Wan2.1-T2V-14B-Diffusers", "t2v", "2.1", summary="Wan 2.1 text-to-video, 14B, 480p/720p"
    ),
    "i2v-14b-2.1": Flavour(
        "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
        "i2v",
        "2.1",
        summary="Wan 2.1 image-to-video, 14B, 480p (CLIP image embeddings + first-frame latents)",
    ),
    "i2v-14b-2.1-720p": Flavour(
        "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
        "i2v",
        "2.1",
        summary="Wan 2.1 image-to-video, 14B, 720p (CLIP image embeddings + first-frame latents)",
    ),
    "flf2v-14b-2.1": Flavour(
        "Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers",
        "flf2v",
        "2.1",
        summary="Wan 2.1 first-last-frame-to-video, 14B, 720p",
    ),
    "i2v-14b-2.2-high": Flavour(
        "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
        "i2v",
        "2.2",
        "high",
        summary="Wan 2.2 image-to-video A14B, high-noise expert (`transformer`)",
    ),
    "i2v-14b-2.2-low": Flavour(
        "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
        "i2v",
        "2.2",
        "low",
        summary="Wan 2.2 image-to-video A14B, low-noise expert (`transformer_2`)",
    ),
    "t2v-14b-2.2-high": Flavour(
        "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
        "t2v",
        "2.2",
        "high",
        summary="Wan 2.2 text-to-video A14B, high-noise expert (`transformer`)",
    ),
    "t2v-14b-2.2-low": Flavour(
        "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
        "t2v",
        "2.2",
        "low",
        summary="Wan 2.2 text-to-video A14B, low-noise expert (`transformer_2`)",
    ),
    "ti2v-5b-2.2": Flavour(
        "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        "ti2v",
        "2.2",
        summary="Wan 2.2 TI2V 5B: text- or image-to-video, 48-channel VAE, per-token timesteps",
        fps=24.0,
    ),
}


_TASK_WORDS = {"t2v": "text-to-video", "i2v": "image-to-video", "flf2v": "first-last-frame", "ti2v": "TI2V"}


def unknown_flavour(name: str) -> str:
    """Why ``name`` is not a flavour here, naming what is missing rather than listing every flavour.

    A flavour of a Wan version, task or size this plugin does not have (a future Wan, speech-to-video)
    says that support for it is what is missing; a near miss gets the nearest names.
    """
    from tuner.errors import did_you_mean

    parts = name.lower().split("-")
    versions = sorted({f.version for f in FLAVOURS.values()})
    tasks = {f.task for f in FLAVOURS.values()}
    version = next((m.group(1) for p in parts if (m := re.fullmatch(r"(?:wan)?(\d+\.\d+)", p))), None)
    if version is not None and version not in versions:
        return (
            f"'{name}' names Wan {version}, which the installed Wan plugin does not support (it trains Wan"
            f" {' and '.join(versions)}): Wan {version} support is not installed; pick one of its flavours, or a"
            " tuner version that adds it"
        )
    task = parts[0]
    if task not in tasks and re.fullmatch(r"[a-z0-9]+2v", task):
        known = ", ".join(f"{t} ({w})" for t, w in _TASK_WORDS.items())
        return f"'{name}': {task} models are not supported by the installed Wan plugin, which trains {known}"
    hint = did_you_mean(name, FLAVOURS)
    if hint:
        return f"'{name}' is not a flavour of the installed Wan plugin{hint}"
    same = [n for n, f in FLAVOURS.items() if (task not in tasks or f.task == task) and f.version in (version or f.version)]
    return f"'{name}' is not a flavour of the installed Wan plugin; it has {', '.join(same or FLAVOURS)}"

"""The frozen teacher: DINOv2 from transformers, and the per-clip features cached with the latents.

The teacher is loaded through the Hugging Face cache (a hub id or a local
folder), never torch.hub, and only when some clip's features are missing: a
run whose caches are complete reads its config and nothing else.

Latent frames and pixel frames: a video VAE that folds ``t`` frames into one
latent frame (``ModelBundle.temporal_compression``, 4 for Wan 2.1 and 2.2)
turns ``k * t + 1`` pixel frames into ``k + 1`` latent frames: the first on its
own, then each run of ``t``. The teacher sees every pixel frame, and the
features of a latent frame are the mean of its pixel frames' features, so the
hidden states of latent frame ``j`` are aligned to what those frames show.

Aspect: a frame is resized for the teacher to a patch grid of about
``(crepa_encoder_image_size / patch)^2`` patches with the frame's own aspect
(`teacher_grid`), not squashed to a square: DINOv2 interpolates its position
embeddings to any grid, and undistorted content is what it was trained on.

What is stored per clip: ``(latent frames, grid rows, grid columns, dim)``
float16 patch features scaled to unit length, so the training step, which only
compares directions (cosines), does no work on them; the grid travels in the
shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import ConfigError, PluginError

if TYPE_CHECKING:
    import torch

    from tuner.types.bundle import ModelBundle

    from tuner_crepa.settings import CrepaSection

__all__ = [
    "ENCODERS", "FEATURES_KEY", "TeacherInfo", "resolve_encoder", "teacher_info", "teacher_grid", "frame_groups", "DinoFeatures"
]

# The guide's torch.hub names -> the same weights as transformers checkpoints.
ENCODERS = {
    "dinov2_vits14": "facebook/dinov2-small",
    "dinov2_vitb14": "facebook/dinov2-base",
    "dinov2_vitl14": "facebook/dinov2-large",
    "dinov2_vitg14": "facebook/dinov2-giant",
}
FEATURES_KEY = "crepa_features"
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet, as DINOv2 was trained
_FRAMES_PER_PASS = 16  # frames per teacher forward: bounds its activation memory
_VERSION = 2  # bump when what `encode` stores changes (2: unit length, aspect kept, grid in the shape)


def resolve_encoder(name: str) -> str:
    """A local folder (absolute) or a hub id for ``crepa_encoder``."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return ENCODERS.get(name, name)


def _cannot_load(name: str, ref: str, exc: BaseException) -> ConfigError:
    from huggingface_hub.constants import HF_HUB_CACHE

    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError(
        f"crepa_encoder = '{name}': cannot load {ref} ({reason}); pre-fill the Hugging Face cache {HF_HUB_CACHE}"
        f" on a connected machine (`hf download {ref}`) or set crepa_encoder to a local folder with a"
        " transformers Dinov2Model (config.json + model.safetensors)"
    )


@dataclass(frozen=True)
class TeacherInfo:
    """What set-up needs of the teacher without loading its weights."""

    ref: str
    hidden_size: int
    patch_size: int


def teacher_info(section: CrepaSection) -> TeacherInfo:
    """Read the teacher's config (width, patch size) and check the image size against it."""
    from transformers import Dinov2Config

    ref = resolve_encoder(section.crepa_encoder)
    try:
        config = Dinov2Config.from_pretrained(ref)
    except Exception as exc:  # noqa: BLE001 - offline, missing or not a DINOv2: one line either way
        raise _cannot_load(section.crepa_encoder, ref, exc) from None
    patch = int(config.patch_size)
    if section.crepa_encoder_image_size % patch:
        size = section.crepa_encoder_image_size
        raise ConfigError(
            f"crepa_encoder_image_size = {size} is not a multiple of the teacher's patch size {patch}"
            f" (use {max(patch, size // patch * patch)}, e.g. 518 or 224 for DINOv2)"
        )
    return TeacherInfo(ref, int(config.hidden_size), patch)


def teacher_grid(height: int, width: int, image_size: int, patch: int) -> tuple[int, int]:
    """The teacher's patch grid ``(rows, columns)`` for ``height x width`` frames: about ``(image_size / patch)^2``
    patches, shaped like the frame (a square frame gets ``image_size / patch`` each way)."""
    import math

    count = (image_size // patch) ** 2
    return max(1, round(math.sqrt(count * height / width))), max(1, round(math.sqrt(count * width / height)))


def frame_groups(num_frames: int, compression: int) -> list[range]:
    """The pixel frames of each latent frame: the first alone, then runs of ``compression``."""
    if compression <= 1:
        return [range(i, i + 1) for i in range(num_frames)]
    return [range(0, 1)] + [range(i, min(i + compression, num_frames)) for i in range(1, num_frames, compression)]


@dataclass
class DinoFeatures:
    """A `tuner.types.training.ClipFeatures`: the teacher's unit patch features ``(frames, rows, columns, dim)``."""

    section: CrepaSection
    info: TeacherInfo
    bundle: ModelBundle
    name: str = "crepa"
    identity: str = ""
    _model: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        size = self.section.crepa_encoder_image_size
        self.identity = f"{self.info.ref}|size={size}|t={self.bundle.temporal_compression}|v{_VERSION}"

    def start(self, latents_to_encode: int) -> None:
        if not self.section.crepa_drop_vae_encoder:
            return
        if self.bundle.image_conditioned:
            raise ConfigError(
                "crepa_drop_vae_encoder = true, but this model generates from a first frame that validation encodes"
                " with the VAE encoder (image-to-video): set crepa_drop_vae_encoder = false"
            )
        if latents_to_encode:
            raise ConfigError(
                f"crepa_drop_vae_encoder = true, but {latents_to_encode} clip(s) have no cached latents yet and the"
                " VAE encoder must encode them: run once with crepa_drop_vae_encoder = false to fill the cache"
            )
        drop_latent_encoders(self.bundle)

    def _teacher(self, device: torch.device) -> Any:
        import torch
        from transformers import Dinov2Model

        if self._model is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
            try:
                model = Dinov2Model.from_pretrained(self.info.ref, torch_dtype=dtype)
            except Exception as exc:  # noqa: BLE001
                raise _cannot_load(self.section.crepa_encoder, self.info.ref, exc) from None
            self._model = model.to(device).eval().requires_grad_(False)
        return self._model

    def encode(self, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        import torch
        import torch.nn.functional as F

        from tuner_crepa.alignment import unit_patches

        model = self._teacher(pixels.device)
        patch = self.info.patch_size
        rows, columns = teacher_grid(pixels.shape[-2], pixels.shape[-1], self.section.crepa_encoder_image_size, patch)
        mean = torch.tensor(_MEAN, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(_STD, device=pixels.device).view(1, 3, 1, 1)
        dtype = next(model.parameters()).dtype
        out = []
        for clip in pixels:  # (F, C, H, W) in [-1, 1]
            per_frame = []
            for chunk in clip.split(_FRAMES_PER_PASS):
                x = F.interpolate((chunk.float() + 1) / 2, size=(rows * patch, columns * patch), mode="bilinear", antialias=True)
                x = ((x - mean) / std).to(dtype)
                hidden = model(pixel_values=x).last_hidden_state[:, -rows * columns :]  # patch tokens (no CLS, registers)
                per_frame.append(hidden.float())
            frames = torch.cat(per_frame)
            groups = frame_groups(frames.shape[0], self.bundle.temporal_compression)
            latent = torch.stack([frames[g.start : g.stop].mean(0) for g in groups])
            latent = unit_patches(latent).unflatten(1, (rows, columns))
            out.append({FEATURES_KEY: latent.to(torch.float16).cpu()})
        return out

    def done(self) -> None:
        self._model = None  # the teacher is not needed per step: its features are cached


def drop_latent_encoders(bundle: ModelBundle) -> None:
    """Free the encoder half of every latent encoder (``bundle.encoders`` kind ``"latent"``), keeping the decoder.

    diffusers' autoencoders hold it as ``.encoder`` (and ``.quant_conv``); ``encode`` fails afterwards.
    """
    from tuner.progress import notice

    dropped = 0
    for key, kind in bundle.encoders.items():
        vae = bundle.components.get(key)
        if kind != "latent" or vae is None:
            continue
        if not hasattr(vae, "encoder"):
            raise PluginError(
                f"crepa_drop_vae_encoder: the latent encoder '{key}' of model family '{bundle.family}' has no separate"
                " encoder part to free: set crepa_drop_vae_encoder = false"
            )
        vae.encoder = None
        if getattr(vae, "quant_conv", None) is not None:
            vae.quant_conv = None
        dropped += 1
        notice(f"crepa_drop_vae_encoder: freed the encoder of '{key}' (every clip's latents are cached)")
    if not dropped:
        raise PluginError(
            f"crepa_drop_vae_encoder: model family '{bundle.family}' names no latent encoder (bundle.encoders):"
            " set crepa_drop_vae_encoder = false"
        )

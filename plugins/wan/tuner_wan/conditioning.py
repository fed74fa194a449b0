"""Image conditioning of Wan's image-to-video models, as diffusers' `WanImageToVideoPipeline` does it.

Two mechanisms, picked by the loaded model (`conditioning_mode`):

* ``concat`` (Wan 2.1 I2V / FLF2V, Wan 2.2 A14B I2V): the first frame (FLF2V:
  first and last) is VAE-encoded with zero pixels in between, normalised, and
  concatenated with a 4-channel frame mask to the noisy latents: 16 + 4 + 16 =
  36 input channels. Wan 2.1 adds CLIP image embeddings (the penultimate hidden
  state of the pipeline's ``image_encoder``) as ``encoder_hidden_states_image``.
  Both are computed once while the latent cache is built and stored in the
  clip's entry (``cond_latents``, ``image_embeds``).
* ``expand`` (Wan 2.2 TI2V 5B, ``expand_timesteps``): the first latent frame of
  the clip is the clean conditioning frame, at timestep 0 per token, and is left
  out of the loss and never routed. Wan's VAE is causal, so the clip's own first
  latent frame *is* the encoding of its first pixel frame: nothing extra is cached.

`model_inputs` turns a batch, its noisy latents and its noise levels into the
transformer's keyword arguments plus a loss mask: the one function the loss,
the evaluation loss and (per sampler step) validation share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from tuner.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from tuner.types.bundle import ModelBundle

    from tuner_wan.flavours import Flavour

__all__ = [
    "Conditioning",
    "ModelInputs",
    "conditioning_mode",
    "encode_conditioning",
    "frame_mask",
    "model_inputs",
    "text_only_draw",
]

Mode = Literal["none", "concat", "expand"]


@dataclass(frozen=True)
class Conditioning:
    """How the loaded transformer is conditioned.

    :ivar mode: ``none`` (text-to-video), ``concat`` or ``expand`` (see the module doc).
    :ivar last_frame: FLF2V: the last frame conditions too.
    :ivar image_embeds: the transformer takes CLIP image embeddings (Wan 2.1 I2V / FLF2V).
    :ivar text_only_probability: TI2V: the chance a sample trains as plain text-to-video.
    :ivar per_sample_timestep: TI2V with ``wan_force_2_1_time_embedding``: one
        timestep per sample (Wan 2.1 style) instead of one per token.
    """

    mode: Mode = "none"
    last_frame: bool = False
    image_embeds: bool = False
    text_only_probability: float = 0.0
    per_sample_timestep: bool = False

    @property
    def image_conditioned(self) -> bool:
        """Whether clips start from a given first frame (validation needs one); TI2V trained on text alone does not."""
        return self.mode != "none" and not (self.mode == "expand" and self.text_only_probability >= 1.0)


def conditioning_mode(
    flavour: Flavour, transformer_config: Any, z_dim: int, text_only: float = 0.0, per_sample_timestep: bool = False
) -> Conditioning:
    """The `Conditioning` of ``flavour`` once its transformer is loaded; refuses a transformer of the wrong shape."""
    if flavour.task == "t2v":
        return Conditioning()
    if flavour.task == "ti2v":
        return Conditioning("expand", text_only_probability=text_only, per_sample_timestep=per_sample_timestep)
    want = 2 * z_dim + 4
    if transformer_config.in_channels != want:
        raise ConfigError(
            f"wan.model_flavour '{flavour.task}' needs an image-to-video transformer with {want} input channels"
            f" (noisy + mask + conditioning latents); this one has {transformer_config.in_channels}: check"
            " pretrained_transformer_model_name_or_path"
        )
    return Conditioning(
        "concat", last_frame=flavour.task == "flf2v", image_embeds=transformer_config.image_dim is not None
    )


# --------------------------------------------------------------------------
# Encoding (cache build, validation)
# --------------------------------------------------------------------------


def frame_mask(
    batch: int, num_frames: int, latent_shape: tuple[int, int, int], temporal: int, last_frame: bool
) -> torch.Tensor:
    """The 4-channel frame mask of `WanImageToVideoPipeline.prepare_latents`: 1 on the given frames.

    :param num_frames: pixel frames of the clip (``k * temporal + 1``).
    :param latent_shape: ``(frames, height, width)`` of the latents.
    :return: ``(batch, temporal, latent frames, height, width)``.
    """
    import torch

    frames, height, width = latent_shape
    mask = torch.zeros(batch, 1, num_frames, height, width)
    mask[:, :, 0] = 1
    if last_frame:
        mask[:, :, -1] = 1
    # The first pixel frame fills a whole latent frame on its own: repeat it `temporal` times.
    first = torch.repeat_interleave(mask[:, :, 0:1], dim=2, repeats=temporal)
    mask = torch.cat([first, mask[:, :, 1:]], dim=2)
    return mask.view(batch, -1, temporal, height, width).transpose(1, 2)


def _clip_inputs(frames: torch.Tensor) -> list[np.ndarray]:
    """``(N, 3, H, W)`` pixels in [-1, 1] -> uint8 HWC arrays, the images the CLIP processor expects."""
    return [f.permute(1, 2, 0).add(1).mul(127.5).round().clamp(0, 255).byte().cpu().numpy() for f in frames]


def image_embeddings(pipe: Any, images: list[Any], device: torch.device) -> torch.Tensor:
    """CLIP embeddings as `WanImageToVideoPipeline.encode_image` computes them: ``(N, tokens, dim)``."""
    return pipe.encode_image(images, device)


def condition_latents(pipe: Any, first: torch.Tensor, last: torch.Tensor | None, num_frames: int) -> torch.Tensor:
    """Normalised latents of ``[first, zeros..., (last)]``, as `prepare_latents` builds them: ``(B, C, F', H', W')``.

    :param first: ``(B, 3, H, W)`` pixels in [-1, 1].
    """
    import torch

    from tuner_wan.encode import latent_stats

    vae = pipe.vae
    batch, channels, height, width = first.shape
    gap = num_frames - (2 if last is not None else 1)
    parts = [first[:, :, None], first.new_zeros(batch, channels, gap, height, width)]
    if last is not None:
        parts.append(last[:, :, None])
    video = torch.cat(parts, dim=2).to(vae.dtype)
    latents = vae.encode(video).latent_dist.mode()  # diffusers' sample_mode="argmax"
    mean, std = latent_stats(vae, latents)
    return ((latents - mean) / std).float()


def encode_conditioning(bundle: ModelBundle, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Per-clip conditioning tensors the cache stores beside ``latents`` (empty dicts when there are none).

    :param pixels: ``(B, F, 3, H, W)`` in [-1, 1], as `encode_batch` receives them.
    """
    cond: Conditioning = bundle.components["conditioning"]
    batch = pixels.shape[0]
    if cond.mode != "concat":
        return [{} for _ in range(batch)]
    pipe = bundle.components["i2v_pipeline"]
    first = pixels[:, 0]
    last = pixels[:, -1] if cond.last_frame else None
    latents = condition_latents(pipe, first, last, pixels.shape[1]).cpu()
    out: list[dict[str, torch.Tensor]] = [{"cond_latents": latent} for latent in latents]
    if cond.image_embeds:
        images = _clip_inputs(first)
        if last is not None:  # FLF2V: (first, last) per clip, as encode_image([image, last_image])
            images = [img for pair in zip(images, _clip_inputs(last), strict=True) for img in pair]
        embeds = image_embeddings(pipe, images, pixels.device).float().cpu()
        embeds = embeds.view(batch, -1, *embeds.shape[1:]) if last is not None else embeds
        for item, embed in zip(out, embeds, strict=True):
            item["image_embeds"] = embed
    return out


# --------------------------------------------------------------------------
# The transformer's inputs (training, evaluation)
# --------------------------------------------------------------------------


@dataclass
class ModelInputs:
    """What one training or evaluation forward feeds the transformer, and which latents the loss counts.

    :ivar kwargs: keyword arguments of ``WanTransformer3DModel.forward`` (``hidden_states``,
        ``timestep``, ``encoder_hidden_states`` and, for Wan 2.1 I2V, ``encoder_hidden_states_image``).
    :ivar loss_mask: ``(batch, 1, frames, 1, 1)`` float, 1 where the loss counts; ``None``: everywhere.
    :ivar force_keep: ``(batch, tokens)`` bool of tokens a router must never route, or ``None``.
    """

    kwargs: dict[str, Any]
    loss_mask: torch.Tensor | None = None
    force_keep: torch.Tensor | None = None


def text_only_draw(cond: Conditioning, batch: int, generator: torch.Generator) -> torch.Tensor | None:
    """TI2V: which samples of the batch train as plain text-to-video (drawn from ``generator``), or ``None``."""
    import torch

    if cond.mode != "expand" or cond.text_only_probability <= 0:
        return None
    return torch.rand(batch, generator=generator, device=generator.device) < cond.text_only_probability


def model_inputs(
    bundle: ModelBundle,
    batch: dict[str, torch.Tensor],
    noisy: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    text_only: torch.Tensor | None = None,
) -> ModelInputs:
    """The transformer's inputs for ``noisy`` latents at noise levels ``sigmas`` (``(B,)`` in [0, 1]).

    :param batch: the cached batch: ``latents``, ``prompt_embeds`` and the conditioning keys.
    :param text_only: TI2V, from `text_only_draw`: samples trained without their first frame.
    """
    import torch

    cond: Conditioning = bundle.components["conditioning"]
    dtype = bundle.components["dtype"]
    device = noisy.device
    timestep = sigmas.to(device) * 1000.0
    kwargs: dict[str, Any] = {"encoder_hidden_states": batch["prompt_embeds"].to(dtype)}
    if cond.mode == "concat":
        c = batch["cond_latents"]
        temporal = bundle.temporal_compression
        num_frames = (noisy.shape[2] - 1) * temporal + 1
        mask = frame_mask(noisy.shape[0], num_frames, tuple(noisy.shape[2:]), temporal, cond.last_frame)
        kwargs["hidden_states"] = torch.cat([noisy, mask.to(device, noisy.dtype), c.to(device, noisy.dtype)], 1).to(
            dtype
        )
        kwargs["timestep"] = timestep
        if cond.image_embeds:
            embeds = batch["image_embeds"]
            kwargs["encoder_hidden_states_image"] = embeds.flatten(0, 1) if embeds.ndim == 4 else embeds
            kwargs["encoder_hidden_states_image"] = kwargs["encoder_hidden_states_image"].to(device, dtype)
        return ModelInputs(kwargs)
    if cond.mode == "expand":
        return _expand_inputs(bundle, batch["latents"], noisy, timestep, kwargs, text_only)
    kwargs.update(hidden_states=noisy.to(dtype), timestep=timestep)
    return ModelInputs(kwargs)


def _expand_inputs(
    bundle: ModelBundle,
    x0: torch.Tensor,
    noisy: torch.Tensor,
    timestep: torch.Tensor,
    kwargs: dict[str, Any],
    text_only: torch.Tensor | None,
) -> ModelInputs:
    """TI2V: the clean first latent frame in place, timestep 0 on its tokens, out of the loss, never routed."""
    import torch

    from tuner_wan.routing import force_keep_tokens

    batch, _, frames, height, width = noisy.shape
    device = noisy.device
    # 1 on the latents that are noised (as diffusers' first_frame_mask), per sample.
    keep_noisy = torch.ones(batch, 1, frames, 1, 1, device=device)
    # A single latent frame (an image) would leave nothing to predict once given: it trains unconditioned.
    conditioned = torch.full((batch,), frames > 1, dtype=torch.bool, device=device)
    if text_only is not None:
        conditioned &= ~text_only.to(device)
    keep_noisy[conditioned, :, 0] = 0
    hidden = (1 - keep_noisy) * x0.to(device, noisy.dtype) + keep_noisy * noisy
    patch = bundle.components["transformer"].config.patch_size
    if bundle.components["conditioning"].per_sample_timestep:
        # Wan 2.1 style: one embedding per sample. The clean first frame is still given and left out of
        # the loss, but its tokens see the sample's timestep instead of 0 (the memory of a per-token
        # modulation, (batch, tokens, 6, dim), is what this saves).
        kwargs.update(hidden_states=hidden.to(bundle.components["dtype"]), timestep=timestep)
    else:
        # Per token, in the order of patch_embedding(...).flatten(2), as diffusers' `temp_ts`.
        grid = keep_noisy.expand(batch, 1, frames, height // patch[1], width // patch[2])[:, 0, :: patch[0]]
        per_token = (grid * timestep.view(-1, 1, 1, 1)).flatten(1)
        kwargs.update(hidden_states=hidden.to(bundle.components["dtype"]), timestep=per_token)
    force = force_keep_tokens(tuple(noisy.shape), tuple(patch), conditioned_frames=1, device=device)
    if force is not None:
        force &= conditioned[:, None]
        force = force if bool(force.any()) else None
    return ModelInputs(kwargs, loss_mask=keep_noisy, force_keep=force)

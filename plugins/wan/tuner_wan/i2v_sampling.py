"""Validation of image-to-video models: `WanImageToVideoPipeline`'s start and per-step inputs.

The sampler loop stays the one of `tuner_wan.sampling` (with skip-layer
guidance); a `FirstFrameStart` supplies what the image-to-video pipeline does
differently, each piece computed by the pipeline's own methods: the starting
noise and the conditioning (``prepare_latents``), the CLIP image embeddings
(``encode_image``), the model input of each step (latents + mask + conditioning
latents; TI2V: the clean first frame at timestep 0 per token) and, for TI2V,
putting the clean first frame back before decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from tuner_wan.conditioning import Conditioning

__all__ = ["FirstFrameStart", "first_frame_start"]


@dataclass
class FirstFrameStart:
    """The starting noise of one image-to-video clip and how each sampler step feeds the transformer."""

    latents: torch.Tensor
    condition: torch.Tensor
    first_frame_mask: torch.Tensor | None  # TI2V: 0 on the given first latent frame
    image_embeds: torch.Tensor | None
    patch_size: tuple[int, int, int]

    def model_input(self, latents: torch.Tensor, t: torch.Tensor, dtype: torch.dtype) -> tuple[Any, Any, dict]:
        """``(hidden_states, timestep, extra keyword arguments)`` at sampler timestep ``t``, as the pipeline builds them."""
        import torch

        extra = {"encoder_hidden_states_image": self.image_embeds} if self.image_embeds is not None else {}
        if self.first_frame_mask is None:
            return torch.cat([latents, self.condition], dim=1).to(dtype), t.expand(latents.shape[0]), extra
        mask = self.first_frame_mask
        hidden = ((1 - mask) * self.condition + mask * latents).to(dtype)
        _, p_h, p_w = self.patch_size
        per_token = (mask[0][0][:, ::p_h, ::p_w] * t).flatten()
        return hidden, per_token.unsqueeze(0).expand(latents.shape[0], -1), extra

    def finish(self, latents: torch.Tensor) -> torch.Tensor:
        """The latents to decode: TI2V puts the clean first frame back."""
        if self.first_frame_mask is None:
            return latents
        return (1 - self.first_frame_mask) * self.condition + self.first_frame_mask * latents


def first_frame_start(
    i2v: Any, cond: Conditioning, frames: np.ndarray, height: int, width: int, num_frames: int, generator: Any
) -> FirstFrameStart:
    """Prepare one clip from its first (and last) frame, ``frames`` ``(n, H, W, 3)`` uint8.

    ``i2v`` is the model's ``WanImageToVideoPipeline``; the noise comes from
    ``generator`` exactly as ``WanImageToVideoPipeline.__call__`` draws it.
    """
    import torch
    from PIL import Image

    device = i2v._execution_device
    dtype = i2v.transformer.dtype
    first = Image.fromarray(frames[0])
    last = Image.fromarray(frames[-1]) if cond.last_frame and len(frames) > 1 else None
    if cond.last_frame and last is None:
        last = first  # an image source has no last frame of its own: the clip returns to where it began
    embeds = None
    if cond.image_embeds:
        embeds = i2v.encode_image(first if last is None else [first, last], device).to(dtype)
    image = i2v.video_processor.preprocess(first, height=height, width=width).to(device, dtype=torch.float32)
    last_t = None
    if last is not None:
        last_t = i2v.video_processor.preprocess(last, height=height, width=width).to(device, dtype=torch.float32)
    out = i2v.prepare_latents(
        image, 1, i2v.vae.config.z_dim, height, width, num_frames, torch.float32, device, generator, None, last_t
    )
    mask = out[2] if len(out) == 3 else None
    return FirstFrameStart(out[0], out[1], mask, embeds, tuple(i2v.transformer.config.patch_size))

"""Wan's validation sampler: WanPipeline's denoising loop, plus skip-layer guidance.

diffusers' WanPipeline has no place for a third (skip-layer) pass in its loop,
so this is its loop step for step: the same prompt encoding, latents, scheduler
calls and VAE decoding (a test holds the two equal when skip-layer guidance is
off). The skipping itself is diffusers' layer-skip hook (`apply_layer_skip`),
installed on the named blocks for the skip pass only and removed right after,
so no block is ever patched by hand.

Samplers: UniPC multistep (Wan's own scheduler, the default) or flow-matching
Euler, chosen with ``wan_validation_sampler``.

Previews (``validation_preview``): after each step the loop hands the denoised
estimate ``x0 = x_t - sigma * velocity`` to ``on_step_end`` (the role of a
diffusers pipeline's ``callback_on_step_end``, in our own loop);
`decode_preview` decodes its first latent frames with the real VAE. diffusers
has no tiny Wan decoder (its ``AutoencoderTiny`` is 2-D, for image VAEs; the
TAEW2.1 weights load only with their author's own ``taehv`` module), so the
cost is kept low by decoding few frames instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tuner.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from tuner.types.validation import SkipLayerGuidance, ValidationRequest

    from tuner_wan.i2v_sampling import FirstFrameStart

    StartFactory = Callable[[torch.Generator], FirstFrameStart]

__all__ = ["SAMPLERS", "PREVIEW_LATENT_FRAMES", "make_scheduler", "skipped_blocks", "sample_clip", "decode_preview"]

SAMPLERS = ("unipc", "euler")
# Latent frames a preview decodes: 1 + 4 = 5 frames with Wan's 4x temporal compression. The VAE's cost grows
# with the latent frames it decodes, so a preview of an 81-frame clip (21 latent frames) costs about a tenth of
# the clip's own decode, and the first frames still show an image-to-video clip start to move.
PREVIEW_LATENT_FRAMES = 2


def make_scheduler(kind: str, loaded: Any) -> Any:
    """The validation scheduler ``kind``, with the flow shift of the model's own scheduler config."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    config = loaded.config
    shift = float(config.get("flow_shift") or config.get("shift") or 1.0)
    steps = int(config.get("num_train_timesteps", 1000))
    if kind == "unipc":
        if isinstance(loaded, UniPCMultistepScheduler):
            return loaded
        return UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift, num_train_timesteps=steps
        )
    if kind == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=steps, shift=shift)
    raise ConfigError(f"wan_validation_sampler '{kind}' is not one of {', '.join(SAMPLERS)}")


@contextmanager
def skipped_blocks(transformer: Any, layers: tuple[int, ...]) -> Iterator[None]:
    """Blocks ``layers`` of ``transformer.blocks`` pass their input through unchanged, for the duration."""
    from diffusers.hooks import HookRegistry, LayerSkipConfig, apply_layer_skip
    from diffusers.hooks import layer_skip

    count = len(transformer.blocks)
    if max(layers) >= count:
        raise ConfigError(
            f"validation_guidance_skip_layers {list(layers)} names block {max(layers)}, but this transformer has"
            f" {count} blocks (0..{count - 1})"
        )
    apply_layer_skip(transformer, LayerSkipConfig(indices=list(layers), fqn="blocks"))
    try:
        yield
    finally:
        name = getattr(layer_skip, "_LAYER_SKIP_HOOK", "layer_skip_hook")
        HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(name, recurse=True)


def _guided(
    transformer: Any,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    scale: float,
    slg: SkipLayerGuidance | None,
    extra: dict[str, Any] | None = None,
) -> torch.Tensor:
    """CFG, plus ``slg.scale * (full - skipped)`` when skip-layer guidance is active on this step.

    ``extra``: further keyword arguments of the transformer (image-to-video: the CLIP image embeddings).
    """

    def predict(embeds: torch.Tensor) -> torch.Tensor:
        return transformer(
            hidden_states=x, timestep=t, encoder_hidden_states=embeds, return_dict=False, **(extra or {})
        )[0]

    full = predict(cond)
    pred = full
    if uncond is not None:
        pred = predict(uncond)
        pred = pred + scale * (full - pred)
    if slg is not None:
        with skipped_blocks(transformer, slg.layers):
            skipped = predict(cond)
        pred = pred + slg.scale * (full - skipped)
    return pred


def sample_clip(
    pipe: Any,
    request: ValidationRequest,
    prompt: str,
    scheduler: Any,
    max_sequence_length: int,
    guidance_2: float | None = None,
    enter: Callable[[str], None] | None = None,
    start: StartFactory | None = None,
    on_step_end: Callable[[int, torch.Tensor], None] | None = None,
) -> np.ndarray:
    """One clip, ``(frames, height, width, 3)`` float in [0, 1], from a generator seeded with ``request.seed``.

    A pipeline holding ``transformer_2`` and a ``boundary_ratio`` samples in two
    stages as diffusers does: ``transformer`` for timesteps at or above the
    boundary, ``transformer_2`` (with guidance ``guidance_2``, default the
    request's) below it. ``enter(component)`` is called before a stage's
    transformer runs (experts may take turns on the accelerator).
    ``start``: image-to-video, called with the generator; returns the `FirstFrameStart` of the clip.
    ``on_step_end(step, x0)``: called after each sampler step (``step`` from 1) with the float32 denoised
    estimate of the latents at that step (TI2V: with the clean first frame put back); it must not change them.
    """
    import torch

    with torch.no_grad():
        return _sample(
            pipe, request, prompt, scheduler, max_sequence_length, guidance_2, enter or (lambda _: None), start,
            on_step_end,
        )


def _stages(pipe: Any, scheduler: Any, guidance: float, guidance_2: float | None) -> Any:
    """``stage(t) -> (component name, transformer, guidance scale)`` for timestep ``t``."""
    first = ("transformer", pipe.transformer, guidance)
    second = getattr(pipe, "transformer_2", None)
    ratio = pipe.config.get("boundary_ratio") if second is not None else None
    if ratio is None:
        return lambda t: first
    boundary = ratio * scheduler.config.num_train_timesteps
    low = ("transformer_2", second, guidance if guidance_2 is None else guidance_2)
    return lambda t: first if t >= boundary else low


def _sample(
    pipe: Any,
    request: ValidationRequest,
    prompt: str,
    scheduler: Any,
    max_sequence_length: int,
    guidance_2: float | None,
    enter: Callable[[str], None],
    start: StartFactory | None = None,
    on_step_end: Callable[[int, torch.Tensor], None] | None = None,
) -> np.ndarray:
    import torch

    transformer = pipe.transformer
    # Where the pipeline runs, not where a network sits now: networks may sit in CPU memory between uses.
    device, dtype = pipe._execution_device, transformer.dtype
    guidance = request.guidance_scale
    stage = _stages(pipe, scheduler, guidance, guidance_2)
    # As WanPipeline.do_classifier_free_guidance, for either stage.
    use_cfg = guidance > 1.0 or (guidance_2 is not None and guidance_2 > 1.0)
    generator = torch.Generator(device).manual_seed(request.seed)
    cond, uncond = pipe.encode_prompt(
        prompt=prompt,
        negative_prompt=request.negative_prompt,
        do_classifier_free_guidance=use_cfg,
        num_videos_per_prompt=1,
        max_sequence_length=max_sequence_length,
        device=device,
    )
    cond = cond.to(dtype)
    uncond = uncond.to(dtype) if uncond is not None else None
    scheduler.set_timesteps(request.num_inference_steps, device=device)
    timesteps = scheduler.timesteps
    # Image-to-video: the pipeline's own start (noise + conditioning), drawn from the same generator.
    first = start(generator) if start is not None else None
    if first is not None:
        latents = first.latents
    else:
        latents = pipe.prepare_latents(
            1, pipe.vae.config.z_dim, request.height, request.width, request.num_frames, torch.float32, device, generator
        )
    scheduler.set_begin_index(0)
    slg = request.skip_layer_guidance
    for i, t in enumerate(timesteps):
        active = slg if slg is not None and slg.active(i, len(timesteps)) else None
        name, model, scale = stage(t)
        enter(name)
        if first is not None:
            x, tt, extra = first.model_input(latents, t, dtype)
            pred = _guided(model, x, tt, cond, uncond, scale, active, extra)
        else:
            pred = _guided(model, latents.to(dtype), t.expand(latents.shape[0]), cond, uncond, scale, active)
        if on_step_end is not None:
            # Flow matching: x_t = (1 - sigma) x0 + sigma noise and the model predicts noise - x0. The scheduler's
            # sigmas run in step with its timesteps from the begin index 0 set above.
            sigma = scheduler.sigmas[i].to(device=latents.device, dtype=torch.float32)
            x0 = latents.float() - sigma * pred.float()
            on_step_end(i + 1, first.finish(x0) if first is not None else x0)
        latents = scheduler.step(pred, t, latents, return_dict=False)[0]
    return _decode(pipe, first.finish(latents) if first is not None else latents)


def decode_preview(pipe: Any, x0: torch.Tensor) -> np.ndarray:
    """A cheap look at a denoised estimate: its first `PREVIEW_LATENT_FRAMES` latent frames through the VAE.

    Wan's VAE is causal in time, so these are exactly the first frames a full decode of ``x0`` would give.
    """
    return _decode(pipe, x0[:, :, :PREVIEW_LATENT_FRAMES])


def _decode(pipe: Any, latents: torch.Tensor) -> np.ndarray:
    """As WanPipeline decodes: un-normalise with the VAE's statistics, decode, to numpy frames."""
    import torch

    vae = pipe.vae
    latents = latents.to(dtype=vae.dtype)
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
    video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
    return pipe.video_processor.postprocess_video(video, output_type="np")[0]

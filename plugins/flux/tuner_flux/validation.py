"""Rendering validation images with the trained transformer, through FluxPipeline.

Previews (``validation_preview``) ride FluxPipeline's own loop: a forward hook
on the transformer keeps the step's input latents and predicted velocity, and
``callback_on_step_end`` decodes the denoised estimate ``x0 = x_t - sigma *
velocity`` at the requested steps with the pipeline's VAE (one image decode,
cheap next to a sampler step). Why a hook and not the callback's latents alone:
the callback sees only the latents after the step, in the pipeline's dtype, and
recovering the velocity from two bf16 steps amplifies their rounding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tuner.errors import PluginError
from tuner.types.validation import ValidationResult

if TYPE_CHECKING:
    from tuner.types.bundle import ModelBundle
    from tuner.types.validation import ValidationRequest

__all__ = ["render_validation"]


def render_validation(bundle: ModelBundle, request: ValidationRequest) -> ValidationResult:
    """The request's image, ``(1, H, W, 3)`` in [0, 1]; the core writes the files and the contact sheet.

    ``validation_guidance`` is the guidance embedding's value on dev (FluxPipeline's
    ``guidance_scale``); schnell has none and ignores it. Every image starts from a
    generator seeded with the request's seed.
    """
    import torch

    if request.skip_layer_guidance is not None:
        raise PluginError("validation_guidance_skip_layers: the Flux family does not support skip-layer guidance")
    pipe = bundle.components["pipeline"]
    result = ValidationResult(step=request.step)
    device = pipe._execution_device  # where the pipeline runs; networks may sit in CPU memory between uses
    previews: dict[int, Any] = {}
    with _previews(pipe, request, previews) as callback:
        images = pipe(
            prompt=request.prompt,
            height=request.height,
            width=request.width,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            generator=torch.Generator(device).manual_seed(request.seed),
            max_sequence_length=bundle.components["max_sequence_length"],
            output_type="np",
            callback_on_step_end=callback,
        ).images
    result.frames[request.key] = images[:1]
    if request.preview_steps:
        result.preview_frames[request.key] = previews
    return result


@contextmanager
def _previews(pipe: Any, request: ValidationRequest, out: dict[int, Any]) -> Iterator[Any]:
    """A ``callback_on_step_end`` filling ``out`` with ``{step: (1, H, W, 3) frames}`` and reporting each step
    (``request.on_sampler_step``); ``None`` when there is neither."""
    if not request.preview_steps:
        report = request.on_sampler_step
        yield None if report is None else (lambda *_: report() or {})
        return
    seen: dict[str, Any] = {}

    def keep(_module: Any, _args: Any, kwargs: dict[str, Any], output: Any) -> None:
        # FluxPipeline calls the transformer once per step here (no true-CFG pass: no negative prompt is given).
        seen["x"], seen["v"] = kwargs["hidden_states"], output[0]

    def callback(pipeline: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if i + 1 in request.preview_steps:
            sigma = float(pipeline.scheduler.sigmas[i])
            x0 = seen["x"].float() - sigma * seen["v"].float()
            out[i + 1] = _decode(pipeline, x0, request.height, request.width)
            if request.on_preview is not None:  # written and sent now, while the sampler runs on
                request.on_preview(request.key, i + 1, out[i + 1])
        if request.on_sampler_step is not None:
            request.on_sampler_step()
        return {}

    handle = pipe.transformer.register_forward_hook(keep, with_kwargs=True)
    try:
        yield callback
    finally:
        handle.remove()


def _decode(pipe: Any, packed: Any, height: int, width: int) -> Any:
    """As FluxPipeline decodes its final latents: unpack, undo the VAE's scaling and shift, decode, to numpy."""
    vae = pipe.vae
    latents = pipe._unpack_latents(packed, height, width, pipe.vae_scale_factor)
    latents = (latents / vae.config.scaling_factor) + vae.config.shift_factor
    from diffusers.utils.torch_utils import get_module_execution_device

    image = vae.decode(latents.to(get_module_execution_device(vae), vae.dtype), return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type="np")[:1]

"""One validation round: build the request from the config, render, restore training state."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tuner.validate.settings import parse_size
from tuner.types import ValidationRequest

if TYPE_CHECKING:
    from tuner.config import RunConfig
    from tuner.plugins import PluginHost
    from tuner.types import ModelBundle, ValidationResult

__all__ = ["validation_enabled", "run_validation"]

MAIN_PROMPT_NICKNAME = "main"


def validation_enabled(host: PluginHost, config: RunConfig) -> bool:
    return bool(config.validation.validation_prompt) and host.implements(config.model_family, "validate")


def run_validation(host: PluginHost, bundle: ModelBundle, config: RunConfig, step: int) -> ValidationResult | None:
    """Render the validation prompts at ``step`` into ``output_dir/validation/step-N``.

    Training state is untouched: the global RNG is forked, token routing is
    switched off and the denoiser goes back to train mode afterwards.
    """
    import torch

    v = config.validation
    if not validation_enabled(host, config):
        return None
    width, height = parse_size(v.validation_resolution)
    request = ValidationRequest(
        step=step,
        prompts={MAIN_PROMPT_NICKNAME: v.validation_prompt or ""},
        negative_prompt=v.validation_negative_prompt,
        num_frames=v.validation_num_video_frames,
        width=width,
        height=height,
        num_inference_steps=v.validation_num_inference_steps,
        guidance_scale=v.validation_guidance,
        seed=v.validation_seed,
        output_dir=Path(config.train.output_dir) / "validation" / f"step-{step}",
        fps=v.validation_fps,
    )
    request.output_dir.mkdir(parents=True, exist_ok=True)
    router, bundle.router = bundle.router, None
    was_training = bundle.denoiser.training
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        bundle.denoiser.eval()
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            return host.validate(bundle, request)
    finally:
        bundle.router = router
        bundle.denoiser.train(was_training)

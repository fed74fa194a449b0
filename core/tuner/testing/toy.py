"""The toy family: a per-pixel MLP registered as a plugin object, for tests of the core and of features.

Register it directly (it is no installed plugin)::

    host = PluginHost.build([], extra={"toy": ToyFamily()})
    config = resolve_config(toy_config(tmp_path), host)

It trains, caches, validates, checkpoints and resumes through the same core
code as a real family in milliseconds, and counts the hooks it was called for
(`ToyFamily.calls`), so a test of the core needs no real model. It also proves
the core knows no family. Its model lies in `tuner.testing.toy_model`, imported
by the hooks that need it: loading the plugin costs no torch import, as a real
family's plugin module does not, so a config check through ``tuner`` stays quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from tuner import hookimpl
from tuner.media import write_image
from tuner.train.experts import run_experts
from tuner.train.noising import noisy_inputs
from tuner.train.precision import base_weight_dtype
from tuner.types.bundle import Expert, ModelBundle
from tuner.types.training import LossOutput
from tuner.types.validation import ValidationResult

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ToyFamily", "ToySection", "ToyRouter", "ToyRoutingFeature", "toy_config"]


class ToySection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    toy_hidden: int = Field(32, ge=4, description="Width of the toy denoiser.")
    toy_pool: int = Field(4, ge=1, description="Pixels pooled into one latent pixel.")
    toy_experts: int = Field(1, ge=1, le=2, description="2: two denoisers split the noise range at 0.5, both trained.")
    toy_fps: float | None = Field(None, gt=0, description="The frame rate the toy model states (none by default).")
    toy_flavour: str = Field("plain", description="A name telling toy models apart (ModelBundle.flavour).")


class ToyFamily:
    """Counts its calls so tests can see what the core asked for."""

    def __init__(self, supports_routing: bool = False) -> None:
        self.supports_routing = supports_routing
        self.calls: dict[str, int] = {}
        self.prepare_phases: list[tuple[str, int]] = []
        self.expert_samples: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    @hookimpl
    def register_config_sections(self, register: Any) -> None:
        register("toy", ToySection)

    @hookimpl
    def register_model_families(self, register: Any) -> None:
        register("toy", "a per-pixel MLP for tests")

    @hookimpl
    def load_model(self, config: Any, device: torch.device) -> ModelBundle:
        import torch

        from tuner.testing.toy_model import ToyDenoiser

        self._count("load_model")
        section = config.section("toy")
        torch.manual_seed(0)
        # Stored in the run's base dtype, as a real family does (tuner.train.precision).
        dtype = base_weight_dtype(config)
        model = ToyDenoiser(hidden=section.toy_hidden).requires_grad_(False).to(device, dtype)
        experts = []
        if section.toy_experts == 2:
            second = ToyDenoiser(hidden=section.toy_hidden).requires_grad_(False).to(device, dtype)
            experts = [Expert("high", model, (0.5, 1.0), label="high"), Expert("low", second, (0.0, 0.5), label="low")]
        return ModelBundle(
            experts=experts,
            family="toy",
            denoiser=model,
            lora_target_modules=["inp", "mid", "out"],
            components={"pool": section.toy_pool},
            cache_id=f"toy-{section.toy_pool}",
            frame_rate=section.toy_fps,
            supports_token_routing=self.supports_routing,
            flavour=section.toy_flavour,
            rewritable_inputs=True,
        )

    @hookimpl
    def prepare_model(self, bundle: ModelBundle, config: Any, phase: str) -> None:
        trainable = sum(p.numel() for p in bundle.denoiser.parameters() if p.requires_grad)
        self.prepare_phases.append((phase, trainable))

    @hookimpl
    def encode_batch(self, bundle: ModelBundle, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        import torch.nn.functional as F

        self._count("encode_batch")
        pool = bundle.components["pool"]
        video = pixels.permute(0, 2, 1, 3, 4)  # (B, C, F, H, W)
        latents = F.avg_pool3d(video, (1, pool, pool))
        return [{"latents": latent.float().cpu()} for latent in latents]

    @hookimpl
    def encode_prompts(self, bundle: ModelBundle, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
        from tuner.testing.toy_model import toy_prompt_vector

        self._count("encode_prompts")
        return [{"text": toy_prompt_vector(p)} for p in prompts]

    @hookimpl
    def compute_loss(self, bundle: ModelBundle, batch: dict[str, torch.Tensor], generator: torch.Generator, config: Any) -> LossOutput:
        import torch

        from tuner.train.timesteps import sample_sigmas

        self._count("compute_loss")
        x0 = batch["latents"]
        sigmas = sample_sigmas(x0.shape[0], generator, sigma_range=bundle.sigma_range(), device=x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)

        names = {id(expert.module): expert.name for expert in bundle.trained_experts()}

        def forward(noisy: torch.Tensor, sigmas: torch.Tensor, text: torch.Tensor, count: bool) -> torch.Tensor:
            def run(model: nn.Module, part: dict[str, torch.Tensor]) -> torch.Tensor:
                if count:
                    name = names[id(model)]
                    self.expert_samples[name] = self.expert_samples.get(name, 0) + part["x"].shape[0]
                return model(part["x"], part["sigmas"], part["text"]).float()

            # The core's split: each sample through the trained expert that owns its sigma.
            return run_experts(bundle, sigmas, {"x": noisy, "sigmas": sigmas, "text": text}, run)

        def predict(noisy: torch.Tensor, sigmas: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            self._count("predict")
            return forward(noisy, sigmas, batch["text"][rows], False)

        # The core's noising: plain flow matching, or a feature's rewrite (scheduled sampling) through predict.
        noised = noisy_inputs(bundle, x0, noise, sigmas, generator, predict)
        pred = forward(noised.noisy, sigmas, batch["text"], True)
        return LossOutput(loss=noised.errors(pred).mean(), logs={"toy": 1.0, **noised.logs}, sigmas=sigmas)

    @hookimpl
    def eval_loss(self, bundle: ModelBundle, batch: dict[str, torch.Tensor], sigmas: torch.Tensor, generator: torch.Generator, config: Any) -> torch.Tensor:
        import torch

        from tuner.train.timesteps import add_noise

        self._count("eval_loss")
        x0 = batch["latents"]
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        pred = bundle.denoiser(add_noise(x0, noise, sigmas), sigmas, batch["text"])
        return (pred - (noise - x0)).pow(2).flatten(1).mean(1)

    @hookimpl
    def validate(self, bundle: ModelBundle, request: Any) -> ValidationResult:
        import torch

        from tuner.testing.toy_model import toy_prompt_vector

        self._count("validate")
        self.validate_saw_router = bundle.run.router
        self.validate_saw_training = bundle.denoiser.training
        result = ValidationResult(step=request.step)
        g = torch.Generator().manual_seed(request.seed)
        x = torch.randn(1, 3, 1, request.height // 4, request.width // 4, generator=g)
        for sigma in torch.linspace(1.0, 0.0, request.num_inference_steps + 1)[:-1]:
            x = x - (1.0 / request.num_inference_steps) * bundle.denoiser(x, sigma.view(1), toy_prompt_vector(request.prompt)[None])
        frame = ((x[0, :, 0].permute(1, 2, 0).clamp(-1, 1) + 1) / 2).numpy()
        result.media[request.key] = write_image(frame, request.output_dir / f"{request.key}.png")
        return result


class ToyRouter:
    """A token router that never drops a token."""

    def spans(self, num_blocks):
        return []

    def plan(self, num_blocks, num_tokens, batch_size, generator, force_keep=None):
        return []


class ToyRoutingFeature:
    """A feature plugin that offers a token router."""

    @hookimpl
    def route_tokens(self, bundle: ModelBundle, config: Any) -> ToyRouter:
        return ToyRouter()


def toy_config(folder: Path, **train: Any) -> dict[str, Any]:
    """A toy run's config: clips in ``folder/clips``, output, cache under ``folder``; ``train`` adds [train] options."""
    return {
        "model_family": "toy",
        "train": {"output_dir": str(folder / "out"), "learning_rate": 2e-2, "lora_rank": 8, "max_train_steps": 40, **train},
        "data": {"instance_data_dir": str(folder / "clips"), "num_frames": 3, "resolution": 16, "cache_dir": str(folder / "cache")},
        "validation": {"validation_prompt": "a toy", "validation_resolution": "16x16", "validation_num_inference_steps": 4},
    }

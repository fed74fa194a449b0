"""LTX-Video's parts, loaded with diffusers, and what the hooks do with them.

Training mirrors `LTXPipeline`: latents normalised with the VAE's statistics
and packed into ``(batch, tokens, channels)`` (LTX's transformer has patch size
1), T5 embeddings with their attention mask, ``t = 1000 sigma``, and the
velocity ``noise - x0`` as target (what the pipeline's Euler scheduler steps
with). Validation calls the pipeline itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.errors import ConfigError, PluginError
from tuner.loading import load_denoiser
from tuner.routing import routed_blocks
from tuner.train.noising import noisy_inputs
from tuner.train.timesteps import draw_noise
from tuner.types.bundle import ModelBundle
from tuner.types.validation import ValidationResult

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig
    from tuner.types.adapter import AdapterWeights
    from tuner.types.validation import ValidationRequest

# Attention and feed-forward projections of every block: what LoRA adapts by default.
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]


def load(config: RunConfig, device: torch.device) -> ModelBundle:
    """The pipeline's parts, frozen; VAE (float32) and T5 on ``device``, the transformer on the CPU.

    The transformer may come from elsewhere (`tuner.loading`'s source options): a
    folder, hub id or one ``.safetensors`` file of a fine-tune.
    """
    import torch
    from diffusers import AutoencoderKLLTXVideo, LTXPipeline, LTXVideoTransformer3DModel

    from tuner.train.precision import base_weight_dtype

    section = config.section("ltx")
    sources = section.model_sources(config.resolve_path)
    dtype = base_weight_dtype(config)
    option, source = sources.options["transformer"], sources.transformer
    try:
        transformer = load_denoiser(
            LTXVideoTransformer3DModel, source, base=sources.base, subfolder=sources.transformer_subfolder,
            dtype=dtype, revision=None, option=option,
            diffusers_prefixes=("proj_in.", "time_embed."),  # LTX-Video's own names: patchify_proj, adaln_single
        )
        option, source = sources.options["model"], sources.base
        vae = AutoencoderKLLTXVideo.from_pretrained(source, subfolder="vae", torch_dtype=torch.float32)
        pipe = LTXPipeline.from_pretrained(source, vae=vae, transformer=transformer, torch_dtype=dtype)
    except OSError as exc:
        raise ConfigError(f"{option}: cannot load LTX-Video from '{source}': {str(exc).splitlines()[0]}") from None
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.transformer, vae, pipe.text_encoder):
        module.requires_grad_(False).eval()
    vae.to(device)
    pipe.text_encoder.to(device)
    spatial, temporal = vae.spatial_compression_ratio, vae.temporal_compression_ratio
    encoders = {"vae": dict(vae.config), "t5": pipe.text_encoder.config.to_dict(), "tokens": section.ltx_max_sequence_length}
    return ModelBundle(
        family="ltx",
        denoiser=pipe.transformer,
        lora_target_modules=list(LORA_TARGETS),
        components={
            "pipeline": pipe,
            "vae": vae,
            "text_encoder": pipe.text_encoder,
            "dtype": dtype,
            "max_sequence_length": section.ltx_max_sequence_length,
            # As LTXPipeline scales RoPE: latent frames last temporal / frame_rate seconds, pixels are spatial apart.
            "rope_scale": (temporal / section.ltx_frame_rate, spatial, spatial),
        },
        temporal_compression=temporal,
        spatial_multiple=spatial,
        frame_rate=section.ltx_frame_rate,  # clips are resampled to the rate the model is told
        # The hash of the encoders' configs alone, as this example always had (`tuner.loading.fingerprint`
        # hashes a list of parts, so its id differs): another id would re-encode every LTX cache users already have.
        cache_id=hashlib.sha256(json.dumps(encoders, sort_keys=True, default=str).encode()).hexdigest()[:16],
        supports_token_routing=True,  # velocity_errors carries a router's plan out (tuner.routing.routed_blocks)
        rewritable_inputs=True,  # velocity_errors builds its input with tuner.train.noising.noisy_inputs
        base_model=section.ltx_model_path,
        block_lists=["transformer_blocks"],
        encoders={"text_encoder": "text", "vae": "latent"},
        # Features that read a block frame by frame (CREPA): the blocks hold (B, F*H*W, width), frame-major.
        hidden_size=int(pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim),
        token_grid=token_grid,
    )


def token_grid(batch: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """Patch size 1: one token per latent pixel of latents ``(B, C, F, H, W)``, packed as `velocity_errors` packs."""
    _, _, frames, height, width = batch["latents"].shape
    return frames, height, width


def encode_clips(bundle: ModelBundle, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """``(B, F, C, H, W)`` in [-1, 1] -> per clip ``{"latents": (C, F', H', W')}``, normalised as LTXPipeline does."""
    vae = bundle.components["vae"]
    # The distribution's mean: deterministic, so a cache entry never depends on luck.
    latents = vae.encode(pixels.permute(0, 2, 1, 3, 4).to(vae.dtype)).latent_dist.mode()
    mean, std = (t.view(1, -1, 1, 1, 1).to(latents) for t in (vae.latents_mean, vae.latents_std))
    latents = (latents - mean) * vae.config.scaling_factor / std
    return [{"latents": latent} for latent in latents.float().cpu()]


def encode_texts(bundle: ModelBundle, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
    """Per prompt ``{"prompt_embeds": (tokens, dim)}``: T5's output without the padding."""
    pipe = bundle.components["pipeline"]
    embeds, mask, _, _ = pipe.encode_prompt(
        prompts,
        do_classifier_free_guidance=False,
        max_sequence_length=bundle.components["max_sequence_length"],
        device=pipe._execution_device,  # where the work runs: the encoder may sit in CPU memory between uses
    )
    return [{"prompt_embeds": e[: max(1, int(m.sum()))].cpu()} for e, m in zip(embeds, mask)]


def collate_texts(bundle: ModelBundle, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Zero-pad to ``ltx_max_sequence_length`` with the attention mask the transformer reads, as the pipeline feeds it."""
    import torch

    length = bundle.components["max_sequence_length"]
    first = items[0]["prompt_embeds"]
    embeds = torch.zeros(len(items), length, first.shape[-1], dtype=first.dtype)
    mask = torch.zeros(len(items), length, dtype=torch.bool)
    for i, item in enumerate(items):
        n = min(length, item["prompt_embeds"].shape[0])
        embeds[i, :n], mask[i, :n] = item["prompt_embeds"][:n], True
    return {"prompt_embeds": embeds, "prompt_attention_mask": mask}


def velocity_errors(
    bundle: ModelBundle,
    batch: dict[str, torch.Tensor],
    sigmas: torch.Tensor,
    generator: torch.Generator,
    logs: dict[str, float] | None = None,
) -> torch.Tensor:
    """Per-sample MSE of the predicted velocity at ``sigmas``: the training loss and the evaluation loss.

    The training forward (the denoiser in train mode) carries out the router's
    plan, if a feature offered one, and takes its input from
    `tuner.train.noising.noisy_inputs`, so a feature may rewrite it (scheduled
    sampling); evaluation and validation never route nor rewrite. ``logs``
    receives what such a feature logs.
    """
    x0 = batch["latents"].float()
    noise = draw_noise(x0, generator)
    sigmas = sigmas.to(x0.device)
    _, _, frames, height, width = x0.shape
    model = bundle.denoiser
    dtype = bundle.components["dtype"]

    def tokens(x: torch.Tensor) -> torch.Tensor:  # (B, C, F, H, W) -> (B, F*H*W, C), as LTXPipeline packs
        return x.flatten(2).transpose(1, 2)

    def forward(hidden: torch.Tensor, levels: torch.Tensor, part: dict[str, torch.Tensor], routes: list) -> torch.Tensor:
        with routed_blocks(model.transformer_blocks, routes, per_token=("image_rotary_emb",)):
            return model(
                hidden_states=hidden.to(dtype),
                encoder_hidden_states=part["prompt_embeds"].to(dtype),
                encoder_attention_mask=part["prompt_attention_mask"],
                timestep=levels * 1000.0,
                num_frames=frames,
                height=height,
                width=width,
                rope_interpolation_scale=bundle.components["rope_scale"],
                return_dict=False,
            )[0]

    def predict(x: torch.Tensor, levels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return forward(x, levels, {k: v.index_select(0, rows.to(v.device)) for k, v in batch.items()}, [])

    noised = noisy_inputs(bundle, tokens(x0), tokens(noise), sigmas, generator, predict)  # in the token layout
    routes = []
    if bundle.run.router is not None and model.training:  # drawn after the noise: routing changes no other draw
        routes = bundle.run.router.plan(bundle.num_blocks, frames * height * width, x0.shape[0], generator)
    pred = forward(noised.noisy, sigmas, batch, routes)
    if logs is not None:
        logs.update(noised.logs)
    return noised.errors(pred)


def render(bundle: ModelBundle, request: ValidationRequest) -> ValidationResult:
    """The request's prompt through LTXPipeline itself, from a generator seeded with ``request.seed``."""
    import torch

    if request.skip_layer_guidance is not None:
        raise PluginError("the ltx family has no skip-layer guidance: remove validation_guidance_skip_layers")
    pipe, parts = bundle.components["pipeline"], bundle.components
    result = ValidationResult(step=request.step)
    result.frames[request.key] = pipe(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        height=request.height,
        width=request.width,
        num_frames=request.num_frames,
        frame_rate=bundle.frame_rate,  # what the model was told in training
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        generator=torch.Generator().manual_seed(request.seed),
        max_sequence_length=parts["max_sequence_length"],
        output_type="np",
    ).frames[0]
    return result


def save_adapter(weights: AdapterWeights, path: Path, lora_format: str) -> Path | None:
    """``diffusers``: what ``LTXPipeline.load_lora_weights`` reads. ``comfyui``: LTX-Video's own names
    (diffusers' under ``diffusion_model.``), which ComfyUI and diffusers both load. Scale folded in."""
    if lora_format == "comfyui":
        from safetensors.torch import save_file

        save_file({f"diffusion_model.{k}": v.contiguous() for k, v in weights.scale_baked().items()}, str(path))
        return path
    if weights.kind != "lora":
        return None  # diffusers' LTX loader reads LoRA only: the core writes LyCORIS's own layout
    from diffusers import LTXPipeline

    LTXPipeline.save_lora_weights(str(path.parent), transformer_lora_layers=weights.scale_baked(), weight_name=path.name)
    return path

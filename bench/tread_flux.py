"""TREAD on a CPU-sized Flux: the ``--family flux`` rows of ``bench/tread.py``.

    python bench/tread.py --family flux            # 6 double + 24 single blocks, the guide's two route sets
    python bench/tread.py --family flux --rounds 5

The model has FLUX.1's two block kinds (6 double-stream + 24 single-stream
blocks, 30 in all, so both of the guide's route sets apply unchanged) at a
CPU-sized width (dim 256, 4 heads of 64) on a 64 x 64 latent (``--size``) packed
into 1024 image tokens, with 512 text tokens and LoRA on the plugin's targets. One
step is a training step: the forward (diffusers' own, or the routed one
`tuner_flux.routing.routed_forward`, which routes image tokens only), a
flow-matching MSE, backward and an AdamW update of the LoRA weights.

The predicted speedup counts the matmul FLOPs of one step, block by block,
with the image tokens each block sees under the router's plan: a double block's
image projections (q/k/v/o, 4d-wide MLP) scale with the image tokens, its text
projections not at all, its joint attention with (image + text)^2; a single
block's fused projections (q/k/v, the 4d MLP in and the fused output) and its
attention scale with image + text tokens. Backward counts as for Wan (1x
forward for linear layers, 2.5x for attention). Runs interleave round by round,
as in ``bench/tread.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

LINEAR_TRAIN, ATTENTION_TRAIN = 2.0, 3.5  # forward + backward, in forwards (as bench/tread.py)


def flux_step_flops(tokens_per_block: list[int], double: int, tokens: int, text: int, dim: int) -> float:
    """Matmul FLOPs of one training step when block i sees ``tokens_per_block[i]`` image tokens."""
    total = LINEAR_TRAIN * 2 * 2 * tokens * 64 * dim  # x_embedder + proj_out (64 packed values per token)
    for i, n in enumerate(tokens_per_block):
        joint = n + text
        if i < double:
            linear = 2 * (n + text) * dim * dim * (4 + 8)  # each stream: q/k/v/o + a 4x MLP
        else:
            linear = 2 * joint * dim * dim * (3 + 4 + 5)  # q/k/v, MLP in, fused output (d + 4d -> d)
        attention = 2 * 2 * joint * joint * dim
        total += LINEAR_TRAIN * linear + ATTENTION_TRAIN * attention
    return total


def build_flux(args: argparse.Namespace) -> Any:
    from diffusers import FluxTransformer2DModel
    from peft import LoraConfig, inject_adapter_in_model

    from tuner_flux.plugin import LORA_TARGETS

    torch.manual_seed(0)
    model = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=args.double,
        num_single_layers=args.blocks - args.double,
        attention_head_dim=64,
        num_attention_heads=args.dim // 64,
        joint_attention_dim=args.dim,
        pooled_projection_dim=64,
        guidance_embeds=True,
        axes_dims_rope=(16, 24, 24),
    )
    model.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=16, lora_alpha=16, target_modules=LORA_TARGETS), model)
    return model.train()


def flux_main(args: argparse.Namespace, routers: Any, tokens_per_block: Any) -> None:
    from diffusers import FluxPipeline

    from tuner_flux.routing import routed_forward

    model = build_flux(args)
    configs = routers(model, args.blocks, family="flux")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    g = torch.Generator().manual_seed(0)
    side = args.size // 2
    tokens = side * side
    x0 = torch.randn(1, tokens, 64, generator=g)
    inputs = {
        "encoder_hidden_states": torch.randn(1, args.text, args.dim, generator=g),
        "pooled_projections": torch.randn(1, 64, generator=g),
        "img_ids": FluxPipeline._prepare_latent_image_ids(1, side, side, "cpu", torch.float32),
        "txt_ids": torch.zeros(args.text, 3),
        "guidance": torch.ones(1),
    }

    def step(router: Any, seed: int) -> tuple[float, float]:
        gen = torch.Generator().manual_seed(seed)
        sigma = torch.rand(1, generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        noisy = (1 - sigma) * x0 + sigma * noise
        wall, cpu = time.perf_counter(), time.process_time()
        if router is None:
            pred = model(hidden_states=noisy, timestep=sigma, **inputs, return_dict=False)[0]
        else:
            pred = routed_forward(model, noisy, timestep=sigma, router=router, generator=gen, **inputs)
        F.mse_loss(pred, noise - x0).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - wall, time.process_time() - cpu

    names = list(configs)
    print(
        f"Flux-shaped model: {args.double} double + {args.blocks - args.double} single blocks, dim {args.dim},"
        f" {tokens} image tokens, {args.text} text tokens; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    for name in names:  # warm-up
        step(configs[name], 0)
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            wall, cpu = step(configs[name], r + 1)
            walls[name].append(wall)
            cpus[name].append(cpu)
        print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {walls[n][-1]:.2f}s" for n in names), flush=True)

    def flops(router: Any) -> float:
        return flux_step_flops(tokens_per_block(router, args.blocks, tokens), args.double, tokens, args.text, args.dim)

    wall0, cpu0 = statistics.median(walls["no routing"]), statistics.median(cpus["no routing"])
    base = flops(None)
    print()
    print(
        f"| configuration | mean image tokens per block | s/step (median of {args.rounds}) | speedup | CPU-time speedup"
        " | FLOP-predicted speedup | measured / predicted (wall, CPU) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        seen = tokens_per_block(configs[name], args.blocks, tokens)
        wall = wall0 / statistics.median(walls[name])
        cpu = cpu0 / statistics.median(cpus[name])
        predicted = base / flops(configs[name])
        print(
            f"| flux: {name} | {sum(seen) / len(seen):.0f} | {statistics.median(walls[name]):.2f} | {wall:.3f}x"
            f" | {cpu:.3f}x | {predicted:.3f}x | {wall / predicted:.0%}, {cpu / predicted:.0%} |"
        )

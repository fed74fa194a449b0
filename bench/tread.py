"""TREAD on a CPU-sized Wan or Flux: measured training-step time with and without routing, next to the FLOP prediction.

    python bench/tread.py                 # Wan: the guide's two example route sets on a 30-block model
    python bench/tread.py --family flux   # Flux: 6 double + 24 single blocks, the same route sets
    python bench/tread.py --rounds 5      # more measured steps per configuration

Both models have 30 blocks, so both of the guide's route sets apply unchanged,
at a CPU-sized width (dim 256, heads of 64), with 512 text tokens and LoRA r16
on the family's targets:

* wan: Wan 2.1 1.3B's depth (ffn 1024) on 4 x 64 x 64 latents (4096 tokens);
* flux: FLUX.1's two block kinds (6 double-stream + 24 single-stream) on a
  64 x 64 latent packed into 1024 image tokens; only image tokens are routed.

One step is a training step: the forward (diffusers' own, or the family's routed
one: `tuner_wan.routing.routed_forward`, diffusers' own inside
`tuner.routing.routed_blocks`; `tuner_flux.routing.routed_forward`), a
flow-matching MSE, backward and an AdamW update of the LoRA weights.

Configurations run interleaved, round by round (the order rotating), after one
warm-up step each, so drift in the machine's speed hits them all alike; the
table shows the median step time. Each step is timed twice: wall clock, and
the CPU time of this process, which stays honest on a shared machine where
other jobs take cores away (there, run with OMP_NUM_THREADS=1: threads that
wait for each other's time slices distort both clocks). The last lines say
whether each route set reaches 90 % of its predicted speedup (CPU time).

The predicted speedup counts the matmul FLOPs of one training step, block by
block, with the number of tokens each block actually sees under the router's
plan. Wan: q/k/v/o, cross-attention q/o, the feed-forward network and the patch
embedding / output projection scale with the tokens; self-attention with their
square; cross-attention scores with tokens x text; the text's cross-attention
k/v not at all. Flux: a double block's image projections (q/k/v/o, 4d-wide MLP)
scale with the image tokens, its text projections not at all, its joint
attention with (image + text)^2; a single block's fused projections (q/k/v, the
4d MLP in and the fused output) and its attention scale with image + text
tokens. Backward counts as 1x forward for linear layers (the frozen base needs
input gradients only) and 2.5x for attention (dQ, dK, dV and the recomputed
scores). LoRA, norms, modulation and other elementwise work are left out.

Threads follow OMP_NUM_THREADS (torch's default when unset).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tuner_tread.examples import GUIDE_FIVE_ROUTES, GUIDE_ONE_ROUTE

WAN_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
LINEAR_TRAIN, ATTENTION_TRAIN = 2.0, 3.5  # forward + backward, in forwards
TARGET = 0.9  # measured / predicted speedup


def step_flops(tokens_per_block: list[int], tokens: int, text: int, dim: int, ffn: int, patch_values: int) -> float:
    """Wan: matmul FLOPs of one training step when block i sees ``tokens_per_block[i]`` tokens."""
    total = LINEAR_TRAIN * 2 * 2 * tokens * patch_values * dim  # patch embedding + output projection
    for n in tokens_per_block:
        linear = 2 * n * dim * dim * (4 + 2) + 2 * n * dim * ffn * 2 + 2 * text * dim * dim * 2
        attention = 2 * 2 * n * n * dim + 2 * 2 * n * text * dim
        total += LINEAR_TRAIN * linear + ATTENTION_TRAIN * attention
    return total


def flux_step_flops(tokens_per_block: list[int], double: int, tokens: int, text: int, dim: int) -> float:
    """Flux: matmul FLOPs of one training step when block i sees ``tokens_per_block[i]`` image tokens."""
    total = LINEAR_TRAIN * 2 * 2 * tokens * 64 * dim  # x_embedder + proj_out (64 packed values per token)
    for i, n in enumerate(tokens_per_block):
        joint = n + text
        if i < double:
            linear = 2 * joint * dim * dim * (4 + 8)  # each stream: q/k/v/o + a 4x MLP
        else:
            linear = 2 * joint * dim * dim * (3 + 4 + 5)  # q/k/v, MLP in, fused output (d + 4d -> d)
        attention = 2 * 2 * joint * joint * dim
        total += LINEAR_TRAIN * linear + ATTENTION_TRAIN * attention
    return total


def with_lora(model: nn.Module, targets: list[str]) -> nn.Module:
    """``model`` frozen, with LoRA r16 on ``targets``, in training mode."""
    from peft import LoraConfig, inject_adapter_in_model

    model.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=16, lora_alpha=16, target_modules=targets), model)
    return model.train()


# Where the blocks are, as the Wan and Flux families declare them (`ModelBundle.block_lists`).
BLOCK_LISTS = {"wan": ["blocks"], "flux": ["transformer_blocks", "single_transformer_blocks"]}


def routers(model: nn.Module, family: str = "wan") -> dict[str, Any]:
    """The guide's route sets, read and checked the way a run reads and checks them."""
    from tuner.config import resolve_config
    from tuner.plugins import PluginHost
    from tuner.routing import check_routing
    from tuner.types.bundle import ModelBundle

    host = PluginHost.build([family, "tread"])
    bundle = ModelBundle(family, model, [], supports_token_routing=True, block_lists=BLOCK_LISTS[family])
    out: dict[str, Any] = {"no routing": None}
    for name, tread in (("guide, 1 route", GUIDE_ONE_ROUTE), ("guide, 5 routes", GUIDE_FIVE_ROUTES)):
        router = host.route_tokens(bundle, resolve_config({"tread_config": tread}, host))
        check_routing(bundle, router)
        out[name] = router
    return out


def tokens_per_block(router: Any, blocks: int, tokens: int) -> list[int]:
    seen = [tokens] * blocks
    if router is not None:
        for route in router.plan(blocks, tokens, 1, torch.Generator().manual_seed(0)):
            for i in range(route.start, route.end + 1):
                seen[i] = route.keep.shape[1]
    return seen


@dataclass
class Setup:
    """One family's model, its inputs and its FLOP count, as the measurement loop needs them."""

    title: str
    model: nn.Module
    x0: torch.Tensor  # clean latents, as the transformer takes them
    tokens: int  # routable tokens
    forward: Callable[[Any, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]  # (router, noisy, sigma, gen)
    flops: Callable[[list[int]], float]  # tokens per block -> FLOPs of a step


def wan_setup(args: argparse.Namespace) -> Setup:
    from diffusers import WanTransformer3DModel

    from tuner_wan.routing import routed_forward

    torch.manual_seed(0)
    model = with_lora(
        WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=args.dim // 64,
            attention_head_dim=64,
            in_channels=16,
            out_channels=16,
            text_dim=args.dim,
            freq_dim=256,
            ffn_dim=4 * args.dim,
            num_layers=args.blocks,
            rope_max_seq_len=1024,
        ),
        WAN_TARGETS,
    )
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 16, args.frames, args.size, args.size, generator=g)
    text = torch.randn(1, args.text, args.dim, generator=g)
    tokens = args.frames * (args.size // 2) ** 2

    def forward(router: Any, noisy: torch.Tensor, sigma: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if router is None:
            return model(noisy, sigma * 1000, text, return_dict=False)[0]
        return routed_forward(model, noisy, sigma * 1000, text, router, gen)

    return Setup(
        f"Wan-shaped model: {args.blocks} blocks, dim {args.dim}, {tokens} latent tokens, {args.text} text tokens",
        model, x0, tokens, forward,
        lambda seen: step_flops(seen, tokens, args.text, args.dim, 4 * args.dim, 16 * 4),
    )


def flux_setup(args: argparse.Namespace) -> Setup:
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from tuner_flux.plugin import LORA_TARGETS
    from tuner_flux.routing import routed_forward

    torch.manual_seed(0)
    model = with_lora(
        FluxTransformer2DModel(
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
        ),
        LORA_TARGETS,
    )
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

    def forward(router: Any, noisy: torch.Tensor, sigma: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if router is None:
            return model(hidden_states=noisy, timestep=sigma, **inputs, return_dict=False)[0]
        return routed_forward(model, noisy, timestep=sigma, router=router, generator=gen, **inputs)

    return Setup(
        f"Flux-shaped model: {args.double} double + {args.blocks - args.double} single blocks, dim {args.dim},"
        f" {tokens} image tokens (routed), {args.text} text tokens (never routed)",
        model, x0, tokens, forward,
        lambda seen: flux_step_flops(seen, args.double, tokens, args.text, args.dim),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["wan", "flux"], default="wan", help="model shape to measure")
    parser.add_argument("--blocks", type=int, default=30)
    parser.add_argument("--double", type=int, default=6, help="flux: double-stream blocks among --blocks")
    parser.add_argument("--dim", type=int, default=256, help="model width (heads of 64)")
    parser.add_argument("--frames", type=int, default=4, help="wan: latent frames")
    parser.add_argument("--size", type=int, default=64, help="latent height and width")
    parser.add_argument("--text", type=int, default=512, help="text tokens")
    parser.add_argument("--rounds", type=int, default=3, help="measured steps per configuration")
    args = parser.parse_args()

    setup = (flux_setup if args.family == "flux" else wan_setup)(args)
    model, x0 = setup.model, setup.x0
    configs = routers(model, args.family)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step(router: Any, seed: int) -> tuple[float, float]:
        gen = torch.Generator().manual_seed(seed)
        sigma = torch.rand(1, generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        noisy = (1 - sigma) * x0 + sigma * noise
        wall, cpu = time.perf_counter(), time.process_time()
        F.mse_loss(setup.forward(router, noisy, sigma, gen), noise - x0).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - wall, time.process_time() - cpu

    names = list(configs)
    print(f"{setup.title}; torch {torch.__version__}, {torch.get_num_threads()} threads")
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

    seen = {name: tokens_per_block(router, args.blocks, setup.tokens) for name, router in configs.items()}
    wall0, cpu0 = statistics.median(walls["no routing"]), statistics.median(cpus["no routing"])
    flops0 = setup.flops(seen["no routing"])
    print()
    print(
        f"| {args.family}: configuration | mean routed tokens per block | s/step (median of {args.rounds}) | speedup"
        " | CPU-time speedup | FLOP-predicted speedup | measured / predicted (wall, CPU) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    verdicts = []
    for name in names:
        wall = wall0 / statistics.median(walls[name])
        cpu = cpu0 / statistics.median(cpus[name])
        predicted = flops0 / setup.flops(seen[name])
        print(
            f"| {name} | {sum(seen[name]) / len(seen[name]):.0f} | {statistics.median(walls[name]):.2f} | {wall:.3f}x"
            f" | {cpu:.3f}x | {predicted:.3f}x | {wall / predicted:.0%}, {cpu / predicted:.0%} |"
        )
        if configs[name] is not None:
            verdicts.append(f"  {name}: {cpu / predicted:.0%} of the predicted speedup in CPU time"
                            f" ({'meets' if cpu / predicted >= TARGET else 'BELOW'} the {TARGET:.0%} target)")
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()

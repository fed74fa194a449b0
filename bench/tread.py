"""TREAD on a CPU-sized Wan: measured training-step time with and without routing, next to the FLOP prediction.

    python bench/tread.py                 # the guide's two example route sets on a 30-block model
    python bench/tread.py --rounds 5      # more measured steps per configuration
    python bench/tread.py --family flux   # the same on a Flux-shaped model (bench/tread_flux.py)

The model has Wan 2.1 1.3B's depth (30 blocks, so both of the guide's route sets
apply unchanged) at a CPU-sized width (dim 256, 4 heads of 64, ffn 1024) on
4 x 64 x 64 latents (4096 tokens) and 512 text tokens, with LoRA on the usual
targets. One step is a training step: the forward (diffusers' own, or the
routed one `tuner_wan.routing.routed_forward`), a flow-matching MSE, backward
and an AdamW update of the LoRA weights.

Configurations run interleaved, round by round (the order rotating), after one
warm-up step each, so drift in the machine's speed hits them all alike; the
table shows the median step time. Each step is timed twice: wall clock, and
the CPU time of this process, which stays honest on a shared machine where
other jobs take cores away (there, run with OMP_NUM_THREADS=1: threads that
wait for each other's time slices distort both clocks).

The predicted speedup counts the matmul FLOPs of one training step, block by
block, with the number of tokens each block actually sees under the router's
plan: q/k/v/o, cross-attention q/o, the feed-forward network and the patch
embedding / output projection scale with the tokens; self-attention with their
square; cross-attention scores with tokens x text; the text's cross-attention
k/v not at all. Backward counts as 1x forward for linear layers (the frozen
base needs input gradients only) and 2.5x for attention (dQ, dK, dV and the
recomputed scores). LoRA, norms and other elementwise work are left out.

Threads follow OMP_NUM_THREADS (torch's default when unset).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tuner_tread.examples import GUIDE_FIVE_ROUTES, GUIDE_ONE_ROUTE

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
LINEAR_TRAIN, ATTENTION_TRAIN = 2.0, 3.5  # forward + backward, in forwards


def step_flops(tokens_per_block: list[int], tokens: int, text: int, dim: int, ffn: int, patch_values: int) -> float:
    """Matmul FLOPs of one training step when block i sees ``tokens_per_block[i]`` tokens."""
    total = LINEAR_TRAIN * 2 * 2 * tokens * patch_values * dim  # patch embedding + output projection
    for n in tokens_per_block:
        linear = 2 * n * dim * dim * (4 + 2) + 2 * n * dim * ffn * 2 + 2 * text * dim * dim * 2
        attention = 2 * 2 * n * n * dim + 2 * 2 * n * text * dim
        total += LINEAR_TRAIN * linear + ATTENTION_TRAIN * attention
    return total


def build_model(args: argparse.Namespace) -> nn.Module:
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    model = WanTransformer3DModel(
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
    )
    model.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=16, lora_alpha=16, target_modules=LORA_TARGETS), model)
    return model.train()


def routers(model: nn.Module, blocks: int, family: str = "wan") -> dict[str, Any]:
    """The guide's route sets, read and checked the way a run reads and checks them."""
    from tuner.config import resolve_config
    from tuner.plugins import PluginHost
    from tuner.routing import check_routing
    from tuner.types import ModelBundle

    host = PluginHost.build([family, "tread"])
    bundle = ModelBundle(family, model, LORA_TARGETS, supports_token_routing=True, num_blocks=blocks)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=30)
    parser.add_argument("--dim", type=int, default=256, help="model width (heads of 64)")
    parser.add_argument("--frames", type=int, default=4, help="latent frames")
    parser.add_argument("--size", type=int, default=64, help="latent height and width")
    parser.add_argument("--text", type=int, default=512, help="text tokens")
    parser.add_argument("--rounds", type=int, default=3, help="measured steps per configuration")
    parser.add_argument("--family", choices=["wan", "flux"], default="wan", help="model shape to measure")
    parser.add_argument("--double", type=int, default=6, help="flux: double-stream blocks among --blocks")
    args = parser.parse_args()
    if args.family == "flux":
        from tread_flux import flux_main  # bench/ is the script's folder, so it is on sys.path

        flux_main(args, routers, tokens_per_block)
        return

    from tuner_wan.routing import routed_forward

    model = build_model(args)
    configs = routers(model, args.blocks)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 16, args.frames, args.size, args.size, generator=g)
    text = torch.randn(1, args.text, args.dim, generator=g)
    tokens = args.frames * (args.size // 2) ** 2

    def step(router: Any, seed: int) -> tuple[float, float]:
        gen = torch.Generator().manual_seed(seed)
        sigma = torch.rand(1, generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        noisy = (1 - sigma) * x0 + sigma * noise
        wall, cpu = time.perf_counter(), time.process_time()
        if router is None:
            pred = model(noisy, sigma * 1000, text, return_dict=False)[0]
        else:
            pred = routed_forward(model, noisy, sigma * 1000, text, router, gen)
        F.mse_loss(pred, noise - x0).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - wall, time.process_time() - cpu

    names = list(configs)
    print(
        f"Wan-shaped model: {args.blocks} blocks, dim {args.dim}, {tokens} latent tokens, {args.text} text tokens;"
        f" torch {torch.__version__}, {torch.get_num_threads()} threads"
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

    flops = {
        name: step_flops(tokens_per_block(router, args.blocks, tokens), tokens, args.text, args.dim, 4 * args.dim, 16 * 4)
        for name, router in configs.items()
    }
    wall0, cpu0 = statistics.median(walls["no routing"]), statistics.median(cpus["no routing"])
    print()
    print(
        f"| configuration | mean tokens per block | s/step (median of {args.rounds}) | speedup | CPU-time speedup"
        " | FLOP-predicted speedup | measured / predicted (wall, CPU) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        seen = tokens_per_block(configs[name], args.blocks, tokens)
        wall = wall0 / statistics.median(walls[name])
        cpu = cpu0 / statistics.median(cpus[name])
        predicted = flops["no routing"] / flops[name]
        print(
            f"| {name} | {sum(seen) / len(seen):.0f} | {statistics.median(walls[name]):.2f} | {wall:.3f}x"
            f" | {cpu:.3f}x | {predicted:.3f}x | {wall / predicted:.0%}, {cpu / predicted:.0%} |"
        )


if __name__ == "__main__":
    main()

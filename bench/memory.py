"""Peak memory and step time of each memory option, against the same run without it.

    python bench/memory.py                        # tiny and mid-size Wan-shaped transformers
    python bench/memory.py --steps 5 --rounds 3   # more timed steps, more alternating rounds
    OMP_NUM_THREADS=1 python bench/memory.py --sizes mid   # steadier timings on a busy machine

Every case runs in a fresh process: a Wan-shaped transformer with random weights (no download)
is prepared exactly as a run prepares it (the plugins' ``prepare_model``, base phase, LoRA rank 16
on the family's targets, gradient checkpointing, adapted phase), then trains on one fixed latent
batch: forward, flow-matching loss, backward, AdamW. Printed per case: the denoiser's weight storage and the part
of it kept on the accelerator between uses (the rest streams in from CPU memory or disk), peak
memory during the timed steps (on a CPU: RSS sampled every millisecond, minus the RSS of the
process before the model was built, i.e. without the libraries themselves; on a GPU:
``torch.cuda.max_memory_allocated``), the median step time, and ratios to the baseline of the same
size. Cases run in alternating rounds so that machine noise hits all of them alike.

On a CPU the "accelerator" is CPU memory too, so offloading cannot lower RSS there (it only shows
its time cost); quantization and chunking can. Run it on a GPU for the offload figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

SIZES = {
    # name: (transformer overrides of the tiny config, latent shape (C, F, H, W))
    "tiny": ({}, (16, 5, 8, 8)),
    "mid": (dict(num_attention_heads=8, attention_head_dim=64, ffn_dim=2048, num_layers=8, text_dim=256), (16, 5, 16, 16)),
}
CASES = {
    "baseline": {},
    "group offload (block)": {"enable_group_offload": True},
    "group offload (leaf)": {"enable_group_offload": True, "group_offload_type": "leaf_level"},
    "group offload (disk)": {"enable_group_offload": True, "group_offload_to_disk_path": "{tmp}"},
    "block swap (half)": {"blocks_to_swap": "half"},
    "model cpu offload": {"enable_model_cpu_offload": True},
    "chunked ff (256 tok)": {"enable_chunked_feed_forward": True, "feed_forward_chunk_size": 256},
    "attention sdpa-math": {"attention_mechanism": "sdpa-math"},
    "int8-quanto base": {"base_model_precision": "int8-quanto"},
    "fp8-quanto base": {"base_model_precision": "fp8-quanto"},
}


class PeakSampler:
    """The highest resident set size seen while running (sampled from /proc every millisecond)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.001)

    def __enter__(self) -> PeakSampler:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_case(size: str, case: str, steps: int, tmp: str) -> dict[str, float]:
    """One case in this process; returns peak MiB and step seconds."""
    import tempfile

    import torch
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig, inject_adapter_in_model

    from tuner.config import resolve_config
    from tuner.plugins import PluginHost
    from tuner.types.bundle import ModelBundle
    from tuner_wan.plugin import LORA_TARGETS
    from tuner_wan.tiny import TINY_TRANSFORMER

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides, shape = SIZES[size]
    try:
        import optimum.quanto  # noqa: F401  (imported now so that its size is not counted as the model's)
    except ImportError:
        pass
    before = PeakSampler.rss()  # the libraries alone, before any weight exists
    torch.manual_seed(0)
    model = WanTransformer3DModel(**{**TINY_TRANSFORMER, **overrides}).requires_grad_(False)
    options = dict(CASES[case])
    if options.get("blocks_to_swap") == "half":
        options["blocks_to_swap"] = len(model.blocks) // 2
    if "group_offload_to_disk_path" in options:
        options["group_offload_to_disk_path"] = tempfile.mkdtemp(dir=tmp)
    host = PluginHost.build(["wan", "offload", "attention", "quantize"])
    config = resolve_config({"gradient_checkpointing": True, **options}, host)
    bundle = ModelBundle("wan", model, list(LORA_TARGETS), block_lists=["blocks"])
    host.prepare_model(bundle, config, "base", device)
    inject_adapter_in_model(LoraConfig(r=16, lora_alpha=16, target_modules=LORA_TARGETS), model)
    model.enable_gradient_checkpointing()  # as the guide's runs do; offloading in training needs it
    host.prepare_model(bundle, config, "adapted", device)
    model.to(device)  # what accelerate.prepare does; offloaded models ignore it
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, *shape, generator=g).to(device)
    text = torch.randn(1, 32, model.config.text_dim, generator=g).to(device)

    def step() -> None:
        sigma = torch.rand(1, generator=g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        noisy = (1 - sigma) * x0 + sigma * noise
        pred = model(hidden_states=noisy, timestep=sigma * 1000, encoder_hidden_states=text, return_dict=False)[0]
        torch.nn.functional.mse_loss(pred.float(), noise - x0).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cpu":
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed memory (e.g. weights replaced by quantized ones) back
    step()  # warm-up: allocator, optimizer state, first-call costs
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with PeakSampler() as sampler:
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else sampler.peak - before
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    hooks = [getattr(m, "_diffusers_hook", None) for m in model.modules()]
    units = {id(u): u for h in hooks if h is not None and (u := getattr(h.get_hook("group_offloading"), "unit", None))}
    streamed = sum(t.numel() * t.element_size() for u in units.values() for t in (*u.params, *u.buffers))
    return {
        "peak_mib": peak / 2**20,
        "step_s": statistics.median(times),
        "weights_mib": weights / 2**20,
        "kept_mib": (weights - streamed) / 2**20,
        "device": device.type,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "CASE"), help=argparse.SUPPRESS)
    parser.add_argument("--tmp", default="/tmp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(*args.one, steps=args.steps, tmp=args.tmp)))
        return

    import tempfile

    runs: dict[tuple[str, str], list[dict]] = {(size, case): [] for size in args.sizes for case in CASES}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for size, case in runs:
                cmd = [sys.executable, __file__, "--one", size, case, "--steps", str(args.steps), "--tmp", tmp]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"{size} / {case}: failed: {done.stderr.strip().splitlines()[-1]}", file=sys.stderr)
                    continue
                runs[size, case].append(json.loads(done.stdout.strip().splitlines()[-1]))
    merged = {
        key: {k: (statistics.median(r[k] for r in rs) if k != "device" else rs[0][k]) for k in rs[0]}
        for key, rs in runs.items()
        if rs
    }
    device = next(iter(merged.values()))["device"] if merged else "?"
    memory = "peak CUDA MiB" if device == "cuda" else "peak +RSS MiB"
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(f"\nmemory options: {args.rounds} rounds x {args.steps} timed steps, on {device} (OMP_NUM_THREADS {threads})")
    head = f"{'model':<6} {'option':<22} {'weights':>8} {'kept on dev':>11} {memory:>13} {'x base':>7} {'s/step':>8} {'x base':>7}"
    print(head)
    for (size, case), r in merged.items():
        base = merged.get((size, "baseline"))
        if base is None:
            continue
        print(
            f"{size:<6} {case:<22} {r['weights_mib']:>8.1f} {r['kept_mib']:>11.1f} {r['peak_mib']:>13.1f}"
            f" {r['peak_mib'] / base['peak_mib']:>7.2f} {r['step_s']:>8.4f} {r['step_s'] / base['step_s']:>7.2f}"
        )
    print("weights and kept-on-device in MiB (state_dict bytes; quantized weights count their packed size)")


if __name__ == "__main__":
    main()

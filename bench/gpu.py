"""Wan at real size on a CUDA card: step time, tokens/s, MFU and peak memory per memory/speed option.

    python bench/gpu.py                       # every row, table + gpu_bench.json (under 8 minutes on one H100)
    python bench/gpu.py --only 1.3b --json out.json
    python bench/gpu.py --peak-tflops 989     # a card missing from bench/gpu_plan.py's table of peaks

Two models, random weights in the real diffusers layout written locally (nothing is
downloaded): Wan 2.1 1.3B at its full size (30 blocks, dim 1536) and a Wan 14B expert
at real width (dim 5120, ffn 13824, 40 heads) with as many blocks as the estimate of
`tuner configure` fits on this card without checkpointing (the same depth for every
14B row, so they compare). The VAE and text encoder are the tiny ones (the rows time
the denoiser; cache building is not timed), the prompt is padded to Wan's 512 tokens,
one sample is 33 frames at 832x480 (14,040 tokens), LoRA rank 16, bf16 autocast.

Each row is a real `tuner train` in its own process (an out-of-memory row or a crash
does not end the bench; its budget_s is a hard limit), with one warm-up step and then
``steps`` counted ones: the median step, tokens/s, model TFLOP/s and MFU against the
card's dense bf16 peak (FLOPs: bench/gpu_plan.py), and torch's peak allocated memory over
the run. The bare-loop row is bench/overhead.py's accelerate + diffusers + peft loop on
the same model and batch shape; its step time over the baseline's is the tuner/bare
ratio. Regional compilation (each repeated block through torch.compile) is not a tuner
option: the bench applies it through a prepare_model hook. Refuses in one line without CUDA.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import gpu_plan  # noqa: E402
from tuner import hookimpl  # noqa: E402
from gpu_plan import MODELS, RANK, TEXT_TOKENS, Result, Row  # noqa: E402


def transformer_config(key: str, blocks: int) -> dict[str, Any]:
    """The real widths of ``key`` (`tuner_wan.profile.TRANSFORMERS`) at ``blocks`` deep, reading the tiny text encoder."""
    from tuner_wan.profile import TRANSFORMERS
    from tuner_wan.tiny import TINY_TRANSFORMER

    model = MODELS[key]
    # The tiny text encoder's width feeds the text embedder; everything inside the blocks is real.
    return {**TRANSFORMERS[model.flavour_config], "num_layers": blocks, "text_dim": TINY_TRANSFORMER["text_dim"]}


def write_models(folder: Path, blocks: dict[str, int]) -> None:
    """The tiny Wan folder per model with a real-width transformer (random bf16 weights, made on the card)."""
    import torch
    from diffusers import WanTransformer3DModel

    from tuner.demo import prepare_tiny_model
    from tuner.plugins import PluginHost

    host = PluginHost.build(["wan"])
    for key, depth in blocks.items():
        target = folder / key
        prepare_tiny_model(host, "wan", target)
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = WanTransformer3DModel.from_config(transformer_config(key, depth)).to(torch.bfloat16)
        model.save_pretrained(str(target / "transformer"))
        del model
        torch.cuda.empty_cache()


def base_config(folder: Path, key: str) -> dict[str, Any]:
    model = MODELS[key]
    return {
        "train": {
            "output_dir": str(folder / "runs" / key),
            "overwrite_output_dir": True,
            "lora_rank": RANK,
            "learning_rate": 1e-4,
            "mixed_precision": "bf16",
            "checkpoint_step_interval": 0,
        },
        "data": {
            "instance_data_dir": str(folder / "clips"),
            "num_frames": model.frames,
            "resolution": model.height,
            "resolution_type": "pixel",
            "cache_dir": str(folder / "cache"),
        },
        "wan": {"pretrained_model_name_or_path": str(folder / key), "max_sequence_length": TEXT_TOKENS},
    }


def plugins(settings: dict[str, Any]) -> list[str]:
    """Wan plus the feature plugins whose sections a row sets (``train`` is the core's)."""
    return ["wan", *(section for section in settings if section not in ("train", "data", "validation"))]


def merged(base: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in settings.items():
        out[section] = {**out.get(section, {}), **values}
    return out


class CompileBlocks:
    """Regional compilation: each repeated block through torch.compile, once the adapter is attached."""

    @hookimpl(trylast=True)
    def prepare_model(self, bundle, config, phase, device):  # type: ignore[no-untyped-def]
        if phase != "adapted":
            return
        for path in bundle.block_lists:
            for block in bundle.denoiser.get_submodule(path):
                block.compile()


def run_row(row: Row, folder: Path) -> dict[str, Any]:
    """One row in this process: (counted step times, peak allocated bytes)."""
    import torch

    import overhead

    if row.bare:
        from diffusers import WanTransformer3DModel

        from tuner_wan.plugin import LORA_TARGETS

        model = MODELS[row.model]
        shape = (1, 16, (model.frames - 1) // 4 + 1, model.height // 8, model.width // 8)
        device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: only a smoke run of this function
        text = torch.randn(1, TEXT_TOKENS, transformer_config(row.model, 1)["text_dim"], device=device)

        def forward(transformer: Any, noisy: Any, sigma: Any) -> Any:
            return transformer(hidden_states=noisy, timestep=sigma * 1000, encoder_hidden_states=text, return_dict=False)[0]

        loop = overhead.bare_loop(WanTransformer3DModel, folder / row.model, RANK, list(LORA_TARGETS),
                                  torch.randn(shape), forward, row.steps, mixed_precision="bf16", dtype=torch.bfloat16)
    else:
        raw = merged(base_config(folder, row.model), row.settings)
        extra = {"compile": CompileBlocks()} if row.compile_blocks else {}
        loop = overhead.timed_run(plugins(row.settings), raw, row.steps, extra)
    return {"times": loop.times, "peak_bytes": torch.cuda.max_memory_allocated()}


def installed() -> set[str]:
    return {name for name in ("flash_attn", "sageattention", "optimum.quanto") if _found(name)}


def _found(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=Path("gpu_bench.json"), help="where the figures are written")
    parser.add_argument("--only", action="append", help="rows whose name or model contains this (repeatable)")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, when the table lacks it")
    parser.add_argument("--max-14b-blocks", type=int, default=MODELS["14b"].max_blocks)
    parser.add_argument("--row", type=int, help=argparse.SUPPRESS)  # internal: run row N of the plan here
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    if line := gpu_plan.refusal(torch.cuda.is_available()):
        print(line)
        return 1
    rows = gpu_plan.plan(installed())
    if args.row is not None:  # a child: one row, its figures as one JSON line
        print(json.dumps(run_row(rows[args.row], args.dir)))
        return 0

    from tuner_wan.profile import wan_shape

    started = time.perf_counter()
    props = torch.cuda.get_device_properties(0)
    device = f"{props.name} ({props.total_memory / gpu_plan.GiB:.0f} GiB)"
    peak = gpu_plan.peak_tflops(props.name, args.peak_tflops)
    shapes = {key: wan_shape(transformer_config(key, MODELS[key].max_blocks)) for key in MODELS}
    depth = {"1.3b": MODELS["1.3b"].max_blocks,
             "14b": gpu_plan.fitting_blocks(shapes["14b"], MODELS["14b"].tokens, props.total_memory, args.max_14b_blocks)}
    chosen = [(i, r) for i, r in enumerate(rows) if not args.only or any(o in r.name or o == r.model for o in args.only)]
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        from tuner.data.synthetic import write_synthetic_clips

        model = MODELS["1.3b"]
        write_synthetic_clips(folder / "clips", count=2, num_frames=model.frames, width=model.width, height=model.height)
        write_models(folder, {k: depth[k] for k in {r.model for _, r in chosen}})
        print(f"models written in {time.perf_counter() - started:.0f} s (14B expert: {depth['14b']} blocks)", flush=True)
        for index, row in chosen:
            spec = MODELS[row.model]
            result = Result(row.name, row.model, depth[row.model], spec.tokens)
            budget = gpu_plan.row_budget(row, time.perf_counter() - started)
            if row.skip:
                result.note = row.skip
            elif budget is None:
                result.note = "not run: the bench's time budget is spent"
            else:
                result = measure(index, row, folder, result, shapes[row.model], peak, budget)
            results.append(result)
            print(f"  {row.name}: {result.step_s or 0:.3f} s/step {result.note}", flush=True)
    print()
    print(gpu_plan.table(results, device, peak))
    extra = {"seconds": time.perf_counter() - started, "torch": torch.__version__, "plan": [asdict(r) for _, r in chosen]}
    gpu_plan.write_json(args.json, results, device, peak, extra)
    print(f"\nwritten: {args.json} ({extra['seconds']:.0f} s in all)")
    return 0


def measure(
    index: int, row: Row, folder: Path, result: Result, shape: Any, peak: float | None, budget: float
) -> Result:
    """Run row ``index`` in a child process within ``budget`` seconds; fill ``result`` or say why it has no figures."""
    command = [sys.executable, __file__, "--row", str(index), "--dir", str(folder)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=budget)
    except subprocess.TimeoutExpired:
        result.note = f"over its {budget:.0f} s budget"
        return result
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        result.note = "out of memory" if "OutOfMemory" in done.stderr else f"failed: {tail[:120]}"
        return result
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return gpu_plan.finish(result, figures["times"], gpu_plan.step_flops(shape, result.blocks, result.tokens), peak,
                           figures["peak_bytes"])


if __name__ == "__main__":
    sys.exit(main())

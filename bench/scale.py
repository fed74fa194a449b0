"""Scaling out: samples/s of 1 against 2 processes, and what FSDP2 saves per rank.

    python bench/scale.py            # 1 vs 2 processes on the mid-size model, then the FSDP2 probe
    python bench/scale.py --quick    # fewer steps and rounds

Part 1 trains the mid-size Wan-shaped model of bench/overhead.py (3 blocks, dim 256,
1280 tokens, LoRA r16) with ``tuner train`` in one process and with
``tuner train --num-processes 2`` (accelerate's launcher, gloo on a CPU), each process
on one thread, alternating in rounds. samples/s comes from the step times in
``train_log.jsonl`` (median interval between steps, after two warm-up steps) times
the global batch. Printed: both rates and their ratio (target >= 1.8). On a 2-core
machine two processes take both cores; anything else running shows in the ratio.

Part 2 measures the parameter memory one rank holds for the same model with the
adapter attached, whole (DDP: every rank has every weight) and sharded with torch's
FSDP2 ``fully_shard`` per transformer block, on 2 gloo processes. accelerate 1.15
applies its FSDP plugin only to GPU-like devices (on a CPU the run stays MULTI_CPU and
the plugin is ignored), so the probe calls ``fully_shard`` itself; on GPUs the same
sharding comes from the accelerate config in docs/scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}


def write_run(folder: Path) -> Path:
    import tomlkit

    from overhead import write_mid_model
    from tuner.data.synthetic import write_synthetic_clips

    model = write_mid_model(folder)
    write_synthetic_clips(folder / "clips", count=4, num_frames=17, width=256, height=256)
    config = {
        "plugins": ["wan"],
        "train": {"max_train_steps": 1, "lora_rank": 16, "learning_rate": 1e-4, "checkpoint_step_interval": 0},
        "data": {"instance_data_dir": "clips", "num_frames": 17, "resolution": 256, "cache_dir": "cache"},
        "wan": {"pretrained_model_name_or_path": str(model), "max_sequence_length": 32},
        "console": {"log_format": "quiet"},
    }
    path = folder / "config.toml"
    path.write_text(tomlkit.dumps(config))
    return path


def samples_per_second(config: Path, processes: int, steps: int, name: str) -> float | None:
    """Samples/s of a run of ``steps`` steps in ``processes`` processes (None below 4 steps: nothing to time)."""
    out = config.parent / name
    command = [sys.executable, "-m", "tuner", "train", "--config", str(config)]
    command += ["--num-processes", str(processes)] if processes > 1 else []
    command += ["--set", f"train.output_dir={out}", "--set", f"train.max_train_steps={steps}"]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    times = [json.loads(line)["time"] for line in (out / "train_log.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "step"]  # fmt: skip
    if len(times) < 4:
        return None
    step = statistics.median(b - a for a, b in zip(times[2:], times[3:]))
    return processes / step  # global batch: 1 sample per process per step


def fsdp_probe(model: str) -> None:
    """Run in each of 2 processes: parameter bytes this rank holds, whole and sharded with FSDP2."""
    import torch
    from accelerate import Accelerator
    from diffusers import WanTransformer3DModel
    from torch.distributed.fsdp import fully_shard

    from tuner.train.adapters import attach_adapter
    from tuner.train.settings import TrainSection

    accelerator = Accelerator()  # the gloo process group accelerate's launcher asked for
    denoiser = WanTransformer3DModel.from_pretrained(model, subfolder="transformer").requires_grad_(False)
    targets = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
    attach_adapter(denoiser, TrainSection(lora_rank=16), targets)

    def held() -> int:
        return sum((p.to_local() if hasattr(p, "to_local") else p).nbytes for p in denoiser.parameters())

    whole = held()
    for block in denoiser.blocks:
        fully_shard(block)
    fully_shard(denoiser)
    sharded = held()
    # The sharded model still trains: one forward and backward through the shards.
    x, t, text = torch.randn(1, 16, 5, 32, 32), torch.tensor([500.0]), torch.randn(1, 32, 32)
    denoiser(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0].pow(2).mean().backward()
    if accelerator.is_main_process:
        print(json.dumps({"whole": whole, "sharded": sharded, "processes": accelerator.num_processes}))


def fsdp_figures(folder: Path) -> dict[str, int]:
    from tuner.train.launch import launch_arguments

    args = launch_arguments(2, [], mixed_precision="no")
    args = args[: args.index("--module")]  # a script, not the tuner module
    command = [sys.executable, "-m", "accelerate.commands.launch", *args, __file__, "--fsdp-probe", str(folder / "model")]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"FSDP2 probe failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    parser.add_argument("--fsdp-probe", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fsdp_probe:
        return fsdp_probe(args.fsdp_probe)
    steps, rounds = (8, 1) if args.quick else (16, 2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = write_run(folder)
        samples_per_second(config, 1, 1, "warm")  # builds the caches once
        one: list[float] = []
        two: list[float] = []
        for r in range(rounds):  # alternate so machine noise falls on both
            one.append(samples_per_second(config, 1, steps, f"one-{r}") or 0.0)
            two.append(samples_per_second(config, 2, steps, f"two-{r}") or 0.0)
        a, b = statistics.median(one), statistics.median(two)
        print("mid-size Wan-shaped model (3 blocks, dim 256, 1280 tokens, LoRA r16), 1 thread per process")
        print(f"  1 process    {a:.2f} samples/s")
        print(f"  2 processes  {b:.2f} samples/s   (gloo, DDP through accelerate)")
        print(f"  ratio        {b / a:.2f}x   (target >= 1.8)")
        f = fsdp_figures(folder)
        mib = 2**20
        print(f"\nparameter memory per rank ({f['processes']} processes, base + adapter, float32)")
        print(f"  whole (DDP)        {f['whole'] / mib:.1f} MiB")
        print(f"  sharded (FSDP2)    {f['sharded'] / mib:.1f} MiB   saves {1 - f['sharded'] / f['whole']:.0%} per rank")


if __name__ == "__main__":
    sys.exit(main())

"""CREPA's cost per training step: step time and peak memory with CREPA on vs off, teacher features cached.

    python bench/crepa.py              # 4 rounds of 10 steps per configuration (2-5 minutes)
    python bench/crepa.py --quick      # 2 rounds of 6 steps (1-3 minutes)

Both configurations train the mid-size Wan-shaped transformer of bench/overhead.py (LoRA rank 16,
AdamW, 17 frames of 256x256 -> 5 x 16 x 16 = 1280 tokens) through a real tuner run. CREPA taps
block 1 with a teacher of dinov2_vits14's shape (384 wide, patch 14) at 224 pixels (16 x 16 patches),
random weights written locally. The caches (latents and teacher features) are filled by a first run,
so the measured runs only read them, as a real second run does. Each measured run is its own process,
so its peak memory is its own (CUDA: max allocated during the steps; CPU: the process's peak RSS,
start-up included, so there it mostly shows that CREPA adds nothing that outgrows loading).

Fairness: both sides train the same steps on the same data with the same seed; the first
`WARM_UP` steps of every run are not counted; a round runs off and on back to back, in alternating
order (off-on, on-off, ...), so drift in the machine's speed hits both alike. Per step both the wall
time and the process's CPU time are taken: on a machine shared with other work the wall time also
counts the moments others held the cores, the CPU time far less. Printed: median step times over
all rounds, the median of the rounds' on/off ratios (target <= 1.10) with their range, and the
ratio of peak memory. One more step per run, not timed, runs under torch.profiler and counts the
operations a step launches (aten ops and autograd nodes): a figure the machine's load does not move,
and on an accelerator each is a kernel launch.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
TARGET = 1.10
WARM_UP = 2  # steps of each run not counted: the first allocations, lazy set-up, caches of the allocator


def _teacher(folder: Path) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    path = folder / "dinov2-vits14-shape"
    if not path.is_dir():
        torch.manual_seed(0)
        config = Dinov2Config(hidden_size=384, num_hidden_layers=2, num_attention_heads=6, patch_size=14, image_size=224)
        Dinov2Model(config).save_pretrained(path)
    return path


def child(folder: Path, crepa: bool, steps: int) -> dict[str, float]:
    """One run in this process: median step time and peak memory."""
    from tuner import hookimpl
    from tuner.config import resolve_config
    from tuner.plugins import PluginHost
    from tuner.train.run import train

    class Clock:
        def __init__(self) -> None:
            self.marks: list[tuple[float, float]] = []
            self.profiler: Any = None
            self.ops = 0

        @hookimpl
        def on_run_start(self, run):  # type: ignore[no-untyped-def]
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()  # the steps' peak, not loading's
            self.marks.append((time.perf_counter(), time.process_time()))

        @hookimpl
        def on_step_end(self, run, step, logs):  # type: ignore[no-untyped-def]
            self.marks.append((time.perf_counter(), time.process_time()))
            if step == steps and steps > 1:  # the last, extra step: counted, not timed
                self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.profiler.__enter__()
            elif self.profiler is not None:
                self.profiler.__exit__(None, None, None)
                self.ops = len(self.profiler.events())

    clock = Clock()
    host = PluginHost.build(["wan", "crepa"], extra={"clock": clock})
    options = {
        "train": {"output_dir": str(folder / ("on" if crepa else "off")), "max_train_steps": steps + (steps > 1),
                  "lora_rank": 16, "learning_rate": 1e-4, "checkpoint_step_interval": 0, "overwrite_output_dir": True},
        "data": {"instance_data_dir": str(folder / "clips"), "num_frames": 17, "resolution": 256,
                 "cache_dir": str(folder / "cache")},
        "wan": {"pretrained_model_name_or_path": str(folder / "model"), "max_sequence_length": 32},
        "crepa": {"crepa_enabled": crepa, "crepa_block_index": 1, "crepa_encoder": str(folder / "dinov2-vits14-shape"),
                  "crepa_encoder_image_size": 224},
    }
    train(resolve_config(options, host), host)
    marks = clock.marks[WARM_UP : steps + 1]  # marks[i] ends step i (marks[0]: the run's start)
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if not wall:  # the run that fills the caches counts no step
        return {"wall": 0.0, "cpu": 0.0, "peak_mib": peak, "ops": 0}
    return {"wall": statistics.median(wall), "cpu": statistics.median(cpu), "peak_mib": peak, "ops": clock.ops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", choices=["on", "off"])
    parser.add_argument("--folder")
    parser.add_argument("--steps", type=int, default=10, help="steps per run, the first %d not counted" % WARM_UP)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.folder), args.child == "on", args.steps)))
        return

    sys.path.insert(0, str(HERE))
    from overhead import write_mid_model

    from tuner.data.synthetic import write_synthetic_clips

    rounds, steps = (2, 6) if args.quick else (4, args.steps)
    if steps <= WARM_UP:
        parser.error(f"--steps must exceed the {WARM_UP} warm-up steps")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_mid_model(folder)
        write_synthetic_clips(folder / "clips", count=2, num_frames=17, width=256, height=256)
        _teacher(folder)
        child(folder, True, 1)  # fills the latent and feature caches
        results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
        for r in range(rounds):
            for which in (("off", "on") if r % 2 == 0 else ("on", "off")):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", which, "--folder", str(folder), "--steps", str(steps)],
                    check=True, capture_output=True, text=True,
                )
                results[which].append(json.loads(out.stdout.strip().splitlines()[-1]))
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"mid-size Wan, 1280 tokens, CREPA at block 1, vits14-shaped teacher at 224 (features cached), {device}")
    print(f"{rounds} round(s) of {steps} steps per side, {WARM_UP} warm-up steps not counted per run")
    for clock in ("wall", "cpu"):
        off = statistics.median(r[clock] for r in results["off"])
        on = statistics.median(r[clock] for r in results["on"])
        ratios = [a[clock] / b[clock] for a, b in zip(results["on"], results["off"])]
        spread = f"rounds {min(ratios):.3f}..{max(ratios):.3f}" if len(ratios) > 1 else ""
        print(
            f"step time ({clock:4s}) off {off * 1000:8.1f} ms   on {on * 1000:8.1f} ms"
            f"   ratio {statistics.median(ratios):.3f}  (target <= {TARGET})  {spread}"
        )
    ops_off, ops_on = results["off"][0]["ops"], results["on"][0]["ops"]
    print(f"ops per step     off {ops_off:8d}      on {ops_on:8d}      CREPA adds {ops_on - ops_off} ({ops_on / ops_off - 1:.1%})")
    mem_off = max(r["peak_mib"] for r in results["off"])
    mem_on = max(r["peak_mib"] for r in results["on"])
    print(f"peak memory      off {mem_off:8.1f} MiB  on {mem_on:8.1f} MiB  ratio {mem_on / mem_off:.3f}")


if __name__ == "__main__":
    main()

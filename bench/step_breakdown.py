"""Where a training step's time goes, component by component, on the tiny demo model or a bench row.

    python bench/step_breakdown.py             # 300 steps, the first 30 not counted
    python bench/step_breakdown.py --wall      # wall time instead of the training thread's CPU time
    python bench/step_breakdown.py --row i2v --steps 12 --warm 2   # bench/overhead.py's image-to-video row

Runs a real `tuner train` of the demo config in this process (validation and
checkpoints off, quiet console) with a timer around each part of the loop, and
prints ms per step for each: reading the batch, collating prompts, the
transformer's forward, the rest of the family's loss, backward, clipping, the
optimizer, zero_grad, the schedule, the progress bar, the per-step hooks (the
JSON log), and what is left (the loop's own glue). The clock is the training
thread's CPU time by default: on a shared machine wall time also counts the
moments other processes held the core, spread over whichever part was running;
on an idle one both agree (the loop runs on one thread). Wrapping adds a few
microseconds per timed call; the figures are for finding where time goes, the
ratio to a bare loop is `bench/overhead.py`'s job. ``--row`` trains one of
overhead.py's rows (mid, i2v) instead of the demo. Last line: the CPU time the
process's other threads spent per step (batch read-ahead, OpenMP workers), which
the training thread's clock does not see.
"""

from __future__ import annotations

import argparse
import functools
import gc
import inspect
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

PARTS: dict[str, float] = defaultdict(float)
GC_RUNS: dict[int, int] = defaultdict(int)
ROWS = {"mid": 0, "i2v": 1}  # bench/overhead.py's SIZES
COUNTING = [False]
CLOCK = [time.thread_time]


def timed(owner: Any, name: str, label: str) -> None:
    original = inspect.getattr_static(owner, name)
    static = isinstance(original, staticmethod)
    func = original.__func__ if static else original

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not COUNTING[0]:
            return func(*args, **kwargs)
        start = CLOCK[0]()
        try:
            return func(*args, **kwargs)
        finally:
            PARTS[label] += CLOCK[0]() - start

    setattr(owner, name, staticmethod(wrapper) if static else wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--wall", action="store_true", help="time with perf_counter instead of thread_time")
    parser.add_argument("--row", choices=sorted(ROWS), help="one of bench/overhead.py's rows instead of the demo")
    parser.add_argument("--warm", type=int, default=30, help="steps not counted at the start")
    args = parser.parse_args()
    if args.wall:
        CLOCK[0] = time.perf_counter
    warm = args.warm

    import accelerate
    import torch
    from diffusers import WanTransformer3DModel
    from torch.optim.lr_scheduler import LRScheduler

    import tuner.train.trainer as trainer
    from tuner import hookimpl
    from tuner.config import read_config_file, resolve_config
    from tuner.data.batches import TrainingData
    from tuner.plugins import PluginHost
    from tuner.progress import TrainProgress
    from tuner.train.run import train

    for owner, name, label in [
        (TrainingData, "load_micro_batch", "data: read + tensors + stack"),
        (PluginHost, "collate_prompts", "collate prompts (pad)"),
        (PluginHost, "compute_loss", "loss: compute_loss (all)"),
        (WanTransformer3DModel, "forward", "forward (transformer)"),
        (accelerate.Accelerator, "backward", "backward"),
        (trainer.Trainer, "_clip", "clip"),
        (torch.optim.AdamW, "step", "optimizer step"),
        (torch.optim.Optimizer, "zero_grad", "zero_grad"),
        (LRScheduler, "step", "lr schedule"),
        (TrainProgress, "update", "progress bar"),
        (PluginHost, "on_step_end", "on_step_end hooks (JSON log, ...)"),
    ]:
        timed(owner, name, label)

    gc_start: list[float] = []

    def gc_clock(phase: str, info: dict[str, int]) -> None:
        # the cyclic collector runs inside whichever part allocated last: counted on its own line
        if phase == "start":
            gc_start[:] = [CLOCK[0]()]
        elif COUNTING[0] and gc_start:
            PARTS[f"garbage collection (gen {info['generation']})"] += CLOCK[0]() - gc_start[0]
            GC_RUNS[info["generation"]] += 1

    gc.callbacks.append(gc_clock)
    marks: list[float] = []
    process: list[float] = []  # all threads' CPU time at each step's end

    class Clock:
        @hookimpl
        def on_step_end(self, run, step, logs):  # type: ignore[no-untyped-def]
            marks.append(CLOCK[0]())
            process.append(time.process_time())
            COUNTING[0] = warm <= step < args.steps

    with tempfile.TemporaryDirectory() as tmp:
        if args.row:
            sys.path.insert(0, str(Path(__file__).parent))
            import overhead

            size = overhead.SIZES[ROWS[args.row]]
            model = overhead.write_model(Path(tmp), size)
            raw = overhead.tuner_config(model, Path(tmp) / "run", size)
            raw["train"]["max_train_steps"] = args.steps
            root = None
        else:
            root = Path(tmp) / "demo"
            subprocess.run(["tuner", "demo", "--plugin", "wan", "--dir", str(root), "--prepare-only"], check=True, capture_output=True)
            raw = read_config_file(root / "config.toml")
            raw["train"].update(max_train_steps=args.steps, checkpoint_step_interval=0)
        raw["validation"] = {"validation_prompt": None}
        raw["console"] = {"log_format": "quiet"}
        host = PluginHost.build(["wan"], extra={"clock": Clock()})
        train(resolve_config(raw, host, root), host)

    counted = args.steps - warm
    total = (marks[-1] - marks[warm - 1]) / counted * 1000
    others = (process[-1] - process[warm - 1]) / counted * 1000 - (0 if args.wall else total)
    ms = {k: v / counted * 1000 for k, v in PARTS.items()}
    ms["loss: rest (noise, sigmas, mse)"] = ms.pop("loss: compute_loss (all)") - ms["forward (transformer)"]
    # garbage collection happened inside the timed parts too: take it out of the sum once
    ms["loop glue (the rest)"] = total - sum(v for k, v in ms.items() if not k.startswith("garbage"))
    core = sum(ms[k] for k in ("forward (transformer)", "backward", "clip", "optimizer step", "zero_grad"))
    print(f"{args.row or 'tiny demo'} model, {counted} steps: {total:.2f} ms per step ({'wall' if args.wall else 'CPU'}), of which")
    for label, value in sorted(ms.items(), key=lambda kv: -kv[1]):
        print(f"  {label:36s} {value:7.3f} ms  {100 * value / total:5.1f}%")
    print(f"outside forward/backward/clip/optimizer/zero_grad: {total - core:.3f} ms per step")
    print(f"garbage collections in the counted steps: {dict(GC_RUNS) or 'none'} (by generation; their time is inside the parts above)")
    if not args.wall:
        print(f"CPU time of the other threads: {others:.3f} ms per step")


if __name__ == "__main__":
    sys.exit(main())

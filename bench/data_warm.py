"""Warm start: how long a second run over cached clips takes to reach its first training step.

    python bench/data_warm.py                 # 200 clips (64x64, 17 frames), tiny Wan
    python bench/data_warm.py --clips 1000

A first run fills the caches (that is bench/data_cache.py's subject); then, side
by side in this process, warm runs of the real ``train()`` go up to their first
step. Printed, as medians: the time from start to the first step *beyond model
load* (target < 2 s for 200 clips), split into the scan (list, captions, stat
every file against the probe index) and the preparation (sizing, buckets,
checking every cache entry), next to the model load itself. The first step's own
compute is shown apart. Threads follow OMP_NUM_THREADS.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def write_run(folder: Path, clips: int) -> dict[str, Any]:
    from tuner.data.synthetic import write_synthetic_clips
    from tuner.demo import prepare_tiny_model
    from tuner.plugins import PluginHost

    overrides = prepare_tiny_model(PluginHost.build(["wan"]), "wan", folder / "model")
    write_synthetic_clips(folder / "clips", count=clips, num_frames=17, width=64, height=64)
    raw: dict[str, Any] = {
        "plugins": ["wan"],
        "data": {"instance_data_dir": "clips", "num_frames": 17, "resolution": 64, "cache_dir": "cache"},
        "train": {"output_dir": "out", "max_train_steps": 1, "lora_rank": 4},
    }
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        raw.setdefault(section, {})[name] = value
    return raw


def timed_run(raw: dict[str, Any], folder: Path) -> dict[str, float]:
    """One ``train()`` to its first step, with marks at each phase."""
    import tuner.data.prepare as prepare
    from tuner import hookimpl
    from tuner.config import resolve_config
    from tuner.plugins import PluginHost
    from tuner.train.run import train

    marks: dict[str, float] = {}

    class Marks:
        @hookimpl
        def on_run_start(self, run: Any) -> None:
            marks["run_start"] = time.perf_counter()

        @hookimpl
        def on_step_end(self, run: Any, step: int, logs: dict[str, float]) -> None:
            marks.setdefault("first_step", time.perf_counter())

    def timing(name: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                marks[name] = time.perf_counter() - t0

        return wrapped

    host = PluginHost.build(["wan"], extra={"marks": Marks()})
    config = resolve_config(raw, host, folder)
    host.load_model = timing("load", host.load_model)  # type: ignore[method-assign]
    real_scan, real_prepare = prepare.scan_samples, prepare.prepare_samples
    prepare.scan_samples, prepare.prepare_samples = timing("scan", real_scan), timing("prepare", real_prepare)
    try:
        start = time.perf_counter()
        train(config, host)
    finally:
        prepare.scan_samples, prepare.prepare_samples = real_scan, real_prepare
    return {
        "load": marks["load"],
        "scan": marks["scan"],
        "prepare": marks["prepare"],
        "to_first_step": marks["run_start"] - start - marks["load"],
        "first_step": marks["first_step"] - marks["run_start"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tuner-bench-warm-") as tmp:
        folder = Path(tmp)
        raw = write_run(folder, args.clips)
        cold = time.perf_counter()
        timed_run(raw, folder)
        cold = time.perf_counter() - cold
        runs = [timed_run(raw, folder) for _ in range(args.rounds)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"{args.clips} cached clips (64x64, 17 frames), tiny Wan; first (cold) run {cold:.1f} s")
    print(f"warm runs, median of {args.rounds}:")
    print(f"  model load                         {med['load']:6.2f} s   (not counted)")
    print(f"  start -> first step, beyond load   {med['to_first_step']:6.2f} s   (target < 2 s)")
    print(f"    of which scan                    {med['scan']:6.2f} s")
    print(f"    of which data preparation        {med['prepare']:6.2f} s")
    print(f"  first step itself                  {med['first_step']:6.2f} s")


if __name__ == "__main__":
    main()

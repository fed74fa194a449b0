"""Scheduled sampling's cost per training step, measured against the start-up line's prediction.

    python bench/rollout.py             # 3 rounds of 8 steps per configuration
    python bench/rollout.py --quick     # 1 round of 5 steps

Trains tuner's tiny Wan (the `tuner.testing.runs` run folder: two synthetic clips, batch 1) through a real
tuner run with rollout off and on (max_step_offset 8, probability 0.5, unipc; then rk4 with ReflexFlow),
in alternating order, the first `WARM_UP` steps of each run not counted. For each configuration it prints
the extra no-grad forwards per step the start-up line predicts and the mean the run logged
(``rollout_forwards``), and the median step time over rollout off beside the ratio the prediction implies:
``1 + forwards / (3 x samples per step)``, a no-grad forward of one sample costing about a third of a
training sample's forward and backward. On a machine shared with other work the times are noisy; the
forward counts are not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WARM_UP = 2
BASE = {"scheduled_sampling_max_step_offset": 8, "scheduled_sampling_probability": 0.5}
CONFIGS: dict[str, dict[str, object]] = {
    "off": {},
    "unipc": BASE,
    "rk4+reflexflow": {**BASE, "scheduled_sampling_sampler": "rk4", "scheduled_sampling_reflexflow": True},
}


def run(folder: Path, model: Path, name: str, options: dict[str, object], steps: int) -> tuple[list[float], list[float]]:
    import json

    from tuner.config import merge, parse_overrides, read_config_file, resolve_config
    from tuner.plugins import PluginHost
    from tuner.report.jsonlog import read_log
    from tuner.testing.runs import write_run_folder
    from tuner.train.run import train

    path = write_run_folder(folder / name, model, plugin="wan", steps=steps)
    host = PluginHost.build(["wan", "rollout"])
    settings = [f"{k}={json.dumps(v)}" for k, v in options.items()]
    extra = ["validation.validation_prompt=''", f"train.max_train_steps={steps}", *settings]
    config = resolve_config(merge(read_config_file(path), parse_overrides(extra)), host, base_dir=path.parent)
    train(config, host)
    records = [r for r in read_log(Path(config.train.output_dir)) if r["event"] == "step"][WARM_UP:]
    return [r["step_time"] for r in records], [r.get("rollout_forwards", 0.0) for r in records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds, steps = (1, WARM_UP + 3) if args.quick else (3, WARM_UP + 6)
    sys.path.insert(0, str(HERE.parent / "core"))
    from tuner.demo import prepare_tiny_model
    from tuner.plugins import PluginHost
    from tuner_rollout.plugin import expected_forwards
    from tuner_rollout.settings import RolloutSection

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare_tiny_model(PluginHost.build(["wan"]), "wan", folder / "model")
        times: dict[str, list[float]] = {k: [] for k in CONFIGS}
        forwards: dict[str, list[float]] = {k: [] for k in CONFIGS}
        for r in range(rounds):
            order = list(CONFIGS) if r % 2 == 0 else list(reversed(CONFIGS))
            for name in order:
                t, f = run(folder, folder / "model", f"{name}-{r}", CONFIGS[name], steps)
                times[name] += t
                forwards[name] += f
        off = statistics.median(times["off"])
        print(f"rollout off: {off * 1000:.1f} ms/step (median of {len(times['off'])} steps)")
        for name, options in CONFIGS.items():
            if not options:
                continue
            section = RolloutSection(**options)  # type: ignore[arg-type]
            predicted = expected_forwards(section, 1, section.scheduled_sampling_probability)
            measured = statistics.median(times[name])
            print(
                f"{name}: extra forwards/step predicted {predicted:.1f}, logged {statistics.mean(forwards[name]):.1f};"
                f" step {measured * 1000:.1f} ms = {measured / off:.2f}x off, predicted {1 + predicted / 3:.2f}x"
            )


if __name__ == "__main__":
    main()

"""Config fuzzing: 10,000 damaged configs through the loader; count what is not a project error.

    python bench/fuzz_config.py                  # 10,000 examples, seed 0
    python bench/fuzz_config.py --examples 2000 --seed 7

Each example is a complete config (every option of every installed plugin) with random
damage from `tuner.testing.config_fuzz` (dropped keys, swapped types, extreme and non-finite
numbers, odd unicode, deep nesting, unknown keys, options moved between the top level
and their sections, ``--set`` items), written as TOML or JSON and loaded as ``tuner
train`` loads it. Printed: how many were accepted, refused with a `TunerError`, and
anything else (target 0), each other kind with its smallest example.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis import strategies as st

    from tuner.errors import TunerError
    from tuner.progress import set_log_format
    from tuner.testing.config_fuzz import base_config, config_mutations, entry_points_read_once, load_config_text, write_config

    set_log_format("quiet")  # "plugin switched on" lines, thousands of them
    outcomes: Counter[str] = Counter()
    others: dict[str, tuple[int, str, str]] = {}  # kind -> (size, example, traceback)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "clips").mkdir()
        os.chdir(folder)
        base = base_config(folder)

        @seed(args.seed)
        @settings(
            max_examples=args.examples,
            database=None,
            deadline=None,
            phases=["generate"],  # nothing is raised, so there is nothing to shrink: record and go on
            suppress_health_check=list(HealthCheck),
        )
        @given(config_mutations(base), st.booleans())
        def run(case, as_toml):  # type: ignore[no-untyped-def]
            config, sets = case
            try:
                load_config_text(write_config(folder, config, as_toml), sets)
                outcomes["accepted"] += 1
            except TunerError:
                outcomes["refused (TunerError)"] += 1
            except BaseException as exc:  # noqa: BLE001 - the very thing counted
                if isinstance(exc, KeyboardInterrupt):
                    raise
                kind = f"{type(exc).__name__} at {traceback.extract_tb(exc.__traceback__)[-1].name}"
                outcomes["other: " + kind] += 1
                example = repr((config, sets))
                if kind not in others or len(example) < others[kind][0]:
                    others[kind] = (len(example), example[:2000], traceback.format_exc())

        start = time.perf_counter()
        with entry_points_read_once():
            run()
        elapsed = time.perf_counter() - start

    total = sum(outcomes.values())
    bad = sum(n for kind, n in outcomes.items() if kind.startswith("other"))
    print(f"{total} examples in {elapsed:.1f} s (seed {args.seed})")
    for kind, n in sorted(outcomes.items()):
        print(f"  {kind}: {n}")
    for kind, (_, example, trace) in others.items():
        print(f"\n--- {kind}; smallest example:\n{example}\n{trace}")
    print(f"\nnon-project exceptions: {bad} (target 0)")
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()

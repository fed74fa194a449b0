"""The import graph of `tuner` stays in floor order (``scripts/layers.py``): no new uphill import, no new cycle.

Each uphill link (a node importing one on a higher floor) and each cycle whose two directions are both
runtime imports is listed below with the reason it stays. A new one fails here: move the module to the
floor its users need (DESIGN.md), or, where a type hint truly needs it, add it to the list with its reason.
A listed link that is gone fails too, so that the figures only go down.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "layers.py"

# (lower, higher) -> (type-only, why it stays).
UPWARD: dict[tuple[str, str], tuple[bool, str]] = {
    ("config", "data"): (True, "RunConfig.data and .data_backends are typed; a section lives beside its code"),
    ("config", "train"): (True, "RunConfig.train is typed; a section lives beside the code that reads it"),
    ("config", "validate"): (False, "RunConfig.validation is typed; the held-out check spans two validate sections"),
    # InputRewriter.rewrite takes and returns train.noising's NoisyInputs, whose default score is the velocity
    # error of train.timesteps: the protocol cannot move below train without that math.
    ("hookspecs", "train"): (True, "the rewrite_noisy_input hook returns an InputRewriter"),
    ("plugins", "train"): (True, "the host's rewrite_noisy_input returns an InputRewriter"),
    ("types", "train"): (True, "RunSlots.input_rewriter is an InputRewriter"),
}

# Cycles with a runtime import both ways: (a, b) with a < b -> why it stays. None left: the cycles that remain
# (config with the sections it types, the contract types with train's InputRewriter) need a type hint one way.
RUNTIME_CYCLES: dict[tuple[str, str], str] = {}


def _graph():
    spec = importlib.util.spec_from_file_location("layers_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
        return module.build()
    finally:
        del sys.modules[spec.name]


@pytest.fixture(scope="module")
def graph():
    return _graph()


def test_every_node_sits_on_one_floor(graph):
    for node in graph.nodes:
        graph.floor(node)  # SystemExit naming the module when it is on no floor


def test_no_import_runs_up_a_floor_but_the_listed_ones(graph):
    upward = set(graph.upward())
    new = sorted(link for link in upward if link not in UPWARD)
    assert not new, f"imports from a lower floor up to a higher one: {_where(graph, new)}"
    now_runtime = sorted(link for link in upward if UPWARD[link][0] and not graph.type_only[link])
    assert not now_runtime, f"listed as type-only, now imported at run time: {_where(graph, now_runtime)}"
    gone = sorted(set(UPWARD) - upward)
    assert not gone, f"no longer uphill, take them off UPWARD in this file: {gone}"
    assert len(upward) <= len(UPWARD)


def test_no_runtime_cycle_but_the_listed_ones(graph):
    runtime = {c for c in graph.cycles() if not (graph.type_only[c] or graph.type_only[c[::-1]])}
    new = sorted(runtime - set(RUNTIME_CYCLES))
    assert not new, f"modules importing each other at run time: {new}; {_where(graph, [*new, *(c[::-1] for c in new)])}"
    gone = sorted(set(RUNTIME_CYCLES) - runtime)
    assert not gone, f"no longer a runtime cycle, take them off RUNTIME_CYCLES in this file: {gone}"


def _where(graph, links) -> str:
    return "; ".join(f"{a} -> {b} ({', '.join(sorted(graph.links[(a, b)]))})" for a, b in links)

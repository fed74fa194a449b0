"""The training forward's noisy input through the core (`tuner.train.noising`), and the `rewrite_noisy_input` hook."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tuner import hookimpl
from tuner.config import resolve_config
from tuner.data.synthetic import write_synthetic_clips
from tuner.errors import PluginError
from tuner.plugins import PluginHost
from tuner.report.jsonlog import read_log
from tuner.testing.toy import ToyFamily, toy_config
from tuner.train.run import train
from tuner.types.bundle import ModelBundle


class Replacing:
    """An input rewriter that records what it was given and replaces every input by one Euler step of predict."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.bundle: ModelBundle | None = None

    @hookimpl
    def rewrite_noisy_input(self, bundle: ModelBundle, config: Any) -> Any:
        self.bundle = bundle
        return self

    def rewrite(self, plain, predict, generator, step):  # type: ignore[no-untyped-def]
        rows = torch.arange(plain.x0.shape[0])
        start = (plain.sigmas + 0.1).clamp(max=1.0)
        x = (1 - start.view(-1, 1, 1, 1, 1)) * plain.x0 + start.view(-1, 1, 1, 1, 1) * plain.noise
        v = predict(x, start, rows)
        self.seen.append({"step": step, "grad": torch.is_grad_enabled(), "router": self.bundle.run.router,
                          "v": v.shape == plain.x0.shape, "draw": float(torch.rand(1, generator=generator))})
        rewritten = x + (plain.sigmas - start).view(-1, 1, 1, 1, 1) * v
        return plain.with_input(rewritten, lambda pred, mask: (pred.float() * 0 + 5.0).flatten(1).mean(1), mine=1.0)


@pytest.fixture
def clips(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    return tmp_path


def _train(folder, family, *extra, **options):
    host = PluginHost.build([], extra={"toy": family, **{f"x{i}": p for i, p in enumerate(extra)}})
    raw = toy_config(folder, max_train_steps=3, **options)
    raw["validation"]["validation_prompt"] = None
    train(resolve_config(raw, host), host)
    return [r for r in read_log(folder / "out") if r["event"] == "step"]


def test_hook_rewrite_noisy_input_replaces_the_forwards_input_and_objective(clips):
    seen_inputs: list[torch.Tensor] = []

    class Watched(ToyFamily):
        @hookimpl
        def load_model(self, config, device):  # type: ignore[no-untyped-def, override]
            bundle = ToyFamily.load_model(self, config, device)
            bundle.denoiser.register_forward_pre_hook(lambda m, args: seen_inputs.append(args[0].detach().clone()))
            return bundle

    family, rewriter = Watched(), Replacing()
    steps = _train(clips, family, rewriter, train_batch_size=2)
    assert [s["step"] for s in rewriter.seen] == [0, 1, 2], "the optimizer steps done before each one"
    assert not any(s["grad"] for s in rewriter.seen) and all(s["v"] for s in rewriter.seen)
    assert all(s["router"] is None for s in rewriter.seen)
    assert family.calls["predict"] == 3, "predict is the family's forward, lent to the rewriter"
    # Each step: the rewriter's predict forward, then the training forward on what it returned.
    assert len(seen_inputs) == 6 and not torch.equal(seen_inputs[0], seen_inputs[1])
    assert [s["loss"] for s in steps] == [5.0, 5.0, 5.0], "the rewriter's objective scored the prediction"
    assert all(s["mine"] == 1.0 for s in steps), "its logs reach the step's"


def test_without_a_rewriter_the_input_is_plain_flow_matching(clips):
    family = ToyFamily()
    steps = _train(clips, family)
    assert "predict" not in family.calls and len(steps) == 3


def test_a_family_that_does_not_build_its_input_through_the_core_refuses_a_rewriter(clips):
    class Plain(ToyFamily):
        @hookimpl
        def load_model(self, config, device):  # type: ignore[no-untyped-def, override]
            bundle = ToyFamily.load_model(self, config, device)
            bundle.rewritable_inputs = False
            return bundle

    with pytest.raises(PluginError, match="model family 'toy' does not build its training input with"):
        _train(clips, Plain(), Replacing())

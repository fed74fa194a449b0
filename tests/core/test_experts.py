"""`tuner.train.experts.run_experts`: the forward every multi-expert family shares."""

from __future__ import annotations

import torch
from torch import nn

from tuner.train.experts import run_experts
from tuner.types.bundle import Expert, ModelBundle


class Tagged(nn.Module):
    """Adds its tag to every sample, and remembers the batches it saw."""

    def __init__(self, tag: float) -> None:
        super().__init__()
        self.tag, self.seen = tag, []

    def forward(self, x: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.shape[0])
        return x + self.tag + shared


def _forward(module: nn.Module, part: dict[str, torch.Tensor]) -> torch.Tensor:
    return module(part["x"], part["shared"])


def test_each_sample_runs_through_the_trained_expert_owning_its_sigma_in_batch_order():
    high, low = Tagged(100.0), Tagged(200.0)
    entered: list[str] = []
    bundle = ModelBundle("toy", high, [], experts=[Expert("high", high, (0.5, 1.0)), Expert("low", low, (0.0, 0.5))])
    bundle.run.expert_switch = lambda expert: entered.append(expert.name)
    sigmas = torch.tensor([0.9, 0.1, 0.5, 0.2, 1.0])
    x = torch.arange(5.0).unsqueeze(1)
    pred = run_experts(bundle, sigmas, {"x": x, "shared": torch.tensor(0.5)}, _forward)
    assert pred.squeeze(1).tolist() == [100.5, 201.5, 102.5, 203.5, 104.5]
    assert high.seen == [3] and low.seen == [2] and entered == ["high", "low"]


def test_a_frozen_expert_never_runs_and_a_single_denoiser_is_one_call():
    high, low = Tagged(100.0), Tagged(200.0)
    bundle = ModelBundle("toy", low, [], experts=[Expert("high", high, (0.5, 1.0), trained=False), Expert("low", low, (0.0, 0.5))])
    sigmas = torch.tensor([0.1, 0.4])
    run_experts(bundle, sigmas, {"x": torch.zeros(2, 1), "shared": torch.tensor(0.0)}, _forward)
    assert high.seen == [] and low.seen == [2]
    alone = Tagged(1.0)
    out = run_experts(ModelBundle("toy", alone, []), torch.rand(4), {"x": torch.zeros(4, 1), "shared": torch.tensor(0.0)}, _forward)
    assert alone.seen == [4] and out.squeeze(1).tolist() == [1.0] * 4

"""Features that cache per-clip tensors, add a loss term and train a module of their own (toy family)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tuner import hookimpl
from tuner.config import resolve_config
from tuner.data.synthetic import write_synthetic_clips
from tuner.plugins import PluginHost
from tuner.report.jsonlog import read_log
from tuner.testing.toy import ToyFamily, toy_config
from tuner.train.checkpoints import read_checkpoint
from tuner.train.run import train
from tuner.types.training import AuxiliaryLoss


class RecordingToy(ToyFamily):
    """The toy family, remembering the batches `compute_loss` saw."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[dict[str, torch.Tensor]] = []

    @hookimpl
    def compute_loss(self, bundle, batch, generator, config):  # type: ignore[override]
        self.batches.append({k: v.clone() for k, v in batch.items()})
        return super().compute_loss(bundle, batch, generator, config)


class MeanColour:
    """A `ClipFeatures`: each clip's mean colour per frame, as a feature with a costly encoder would cache."""

    def __init__(self, identity: str = "v1") -> None:
        self.name, self.identity = "colour", identity
        self.encoded = 0
        self.started: list[int] = []
        self.finished = False

    def start(self, latents_to_encode: int) -> None:
        self.started.append(latents_to_encode)

    def encode(self, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        self.encoded += pixels.shape[0]
        return [{"colour_mean": clip.mean(dim=(2, 3)).cpu()} for clip in pixels]  # (frames, channels)

    def done(self) -> None:
        self.finished = True


class ColourFeature:
    def __init__(self, features: MeanColour) -> None:
        self.features = features

    @hookimpl
    def clip_features(self, bundle, config):
        return self.features


@pytest.fixture
def clips(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    return tmp_path


def _run(folder, host, name="out", **train_options):
    cfg = toy_config(folder, **train_options)
    cfg["train"]["output_dir"] = str(folder / name)
    cfg["validation"]["validation_prompt"] = None
    return train(resolve_config(cfg, host), host), [r for r in read_log(folder / name) if r["event"] == "step"]


def test_hook_clip_features_are_cached_beside_the_latents_and_reach_the_batch(clips):
    family, first = RecordingToy(), MeanColour()
    host = PluginHost.build([], extra={"toy": family, "colour": ColourFeature(first)})
    _run(clips, host, max_train_steps=2)
    assert first.started == [2] and first.encoded == 2 and first.finished
    batch = family.batches[0]
    assert batch["colour_mean"].shape == (1, 3, 3)  # (batch, frames, channels)
    assert batch["latents"].shape[:3] == (1, 3, 3)

    # A second run finds every entry: neither the family's encoder nor the feature's runs again.
    again, family2 = MeanColour(), RecordingToy()
    host = PluginHost.build([], extra={"toy": family2, "colour": ColourFeature(again)})
    _run(clips, host, name="again", max_train_steps=1)
    assert again.started == [0] and again.encoded == 0 and "encode_batch" not in family2.calls

    # A new identity (the feature's settings changed) encodes its entries anew, and only them.
    changed, family3 = MeanColour("v2"), RecordingToy()
    host = PluginHost.build([], extra={"toy": family3, "colour": ColourFeature(changed)})
    _run(clips, host, name="changed", max_train_steps=1)
    assert changed.started == [0] and changed.encoded == 2 and "encode_batch" not in family3.calls


def test_hook_clip_features_values_are_the_clip_pixels_own(clips):
    family, features = RecordingToy(), MeanColour()
    host = PluginHost.build([], extra={"toy": family, "colour": ColourFeature(features)})
    _run(clips, host, max_train_steps=2, train_batch_size=2)
    batch = family.batches[0]
    # The toy latents are 4x4-pooled pixels: their mean over space is the clip's mean colour.
    expected = batch["latents"].mean(dim=(3, 4)).transpose(1, 2)
    assert torch.allclose(batch["colour_mean"], expected, atol=1e-5)


class Pull:
    """A feature that trains a module of its own: one parameter pulled toward 3 by an auxiliary term."""

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.module = torch.nn.Linear(1, 1, bias=False).to(torch.bfloat16)  # the core makes it float32
        self.seen_steps: list[int] = []

    @hookimpl
    def prepare_model(self, bundle, config, phase):
        if phase == "adapted":
            with torch.no_grad():
                self.module.weight.fill_(0.0)
            bundle.run.trainables["pull"] = self.module

    @hookimpl
    def auxiliary_loss(self, bundle, batch, output, step, config) -> Any:
        self.seen_steps.append(step)
        term = (self.module.weight - 3.0).pow(2).sum()
        return AuxiliaryLoss("pull", term, self.weight, {"pull_value": float(self.module.weight.detach())})


def test_hook_auxiliary_loss_is_weighted_into_the_loss_and_trains_the_features_module(clips):
    pull = Pull(weight=1.0)
    host = PluginHost.build([], extra={"toy": ToyFamily(), "pull": pull})
    outputs, steps = _run(clips, host, max_train_steps=20, learning_rate=0.1)
    assert pull.module.weight.dtype == torch.float32
    assert pull.seen_steps == list(range(20))
    values = [s["pull_value"] for s in steps]
    assert values[0] == 0.0 and 3.0 > values[-1] > values[10] > 0.5, "the module trained toward the term's minimum"
    # Saved in the checkpoint after the adapter's parameters, not in the exported adapter.
    state, _ = read_checkpoint(outputs["checkpoint"])
    assert float(state["params"][-1].flatten()[0]) == pytest.approx(float(pull.module.weight), abs=0)
    assert not [k for k in load_file(outputs["adapter"]) if "pull" in k]


def test_hook_auxiliary_loss_weighted_zero_changes_nothing_but_the_logs(clips):
    plain_out, plain = _run(clips, PluginHost.build([], extra={"toy": ToyFamily()}), name="plain", max_train_steps=5)
    pull = Pull(weight=0.0)
    host = PluginHost.build([], extra={"toy": ToyFamily(), "pull": pull})
    zero_out, zero = _run(clips, host, name="zero", max_train_steps=5)
    assert [s["loss"] for s in plain] == [s["loss"] for s in zero]
    assert "pull_value" in zero[0] and "pull_value" not in plain[0]
    a, b = load_file(plain_out["adapter"]), load_file(zero_out["adapter"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert float(pull.module.weight) == 0.0, "no gradient reached it"


def test_resume_restores_a_features_module_exactly(clips):
    straight, _ = _run(clips, PluginHost.build([], extra={"toy": ToyFamily(), "pull": Pull(1.0)}), name="straight",
                       max_train_steps=6, checkpoint_step_interval=3, learning_rate=0.1)
    first = Pull(1.0)
    _run(clips, PluginHost.build([], extra={"toy": ToyFamily(), "pull": first}), name="resumed", max_train_steps=3,
         learning_rate=0.1)
    second = Pull(1.0)
    resumed, steps = _run(clips, PluginHost.build([], extra={"toy": ToyFamily(), "pull": second}), name="resumed",
                          max_train_steps=6, learning_rate=0.1, resume_from_checkpoint="latest")
    assert [s["step"] for s in steps][-3:] == [4, 5, 6]
    a, _ = read_checkpoint(straight["checkpoint"])
    b, _ = read_checkpoint(resumed["checkpoint"])
    assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"]))
    assert float(second.module.weight) == float(a["params"][-1].flatten()[0])

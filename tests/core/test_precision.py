"""Mixed precision (toy family): float32 adapter over a bf16/fp16 base, the fp16 scaler, exact resume, save_dtype.

CPU runs both modes for real: torch has bf16 and fp16 autocast on the CPU, and the
core gives a CPU fp16 run the gradient scaler accelerate gives a GPU one.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from tuner import hookimpl
from tuner.config import resolve_config
from tuner.data.synthetic import write_synthetic_clips
from tuner.testing.toy import ToyFamily, toy_config
from tuner.train.checkpoints import read_checkpoint
from tuner.plugins import PluginHost
from tuner.report.jsonlog import read_log
from tuner.train.run import train
from tuner.types.training import LossOutput

LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DtypeProbe:
    """Records the dtypes of the trainable and the frozen parameters once the adapter is attached."""

    def __init__(self) -> None:
        self.trainable: set[torch.dtype] = set()
        self.frozen: set[torch.dtype] = set()

    @hookimpl
    def prepare_model(self, bundle, config, phase):  # type: ignore[no-untyped-def]
        if phase == "adapted":
            for p in bundle.denoiser.parameters():
                (self.trainable if p.requires_grad else self.frozen).add(p.dtype)


class LossSpike(ToyFamily):
    """The toy family, with the loss of chosen steps blown up so that fp16's scaled gradients overflow."""

    def __init__(self, steps: set[int]) -> None:
        super().__init__()
        self.steps = steps

    @hookimpl
    def compute_loss(self, bundle, batch, generator, config):  # type: ignore[no-untyped-def, override]
        out = super().compute_loss(bundle, batch, generator, config)
        if self.calls["compute_loss"] in self.steps:
            # Finite in float32 (the NaN guard lets it through), infinite once scaled by 2**16.
            return LossOutput(loss=out.loss * 1e36, logs=out.logs)
        return out


@pytest.fixture
def run(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=4, num_frames=3, width=16, height=16)

    def go(name="out", family=None, extra=(), **train_options):
        host = PluginHost.build([], extra={"toy": family or ToyFamily(), **{f"x{i}": p for i, p in enumerate(extra)}})
        cfg = toy_config(tmp_path, **train_options)
        cfg["train"]["output_dir"] = str(tmp_path / name)
        cfg["validation"]["validation_prompt"] = None
        outputs = train(resolve_config(cfg, host), host)
        return outputs, [r for r in read_log(tmp_path / name) if r["event"] == "step"]

    go.folder = tmp_path
    return go


@pytest.mark.parametrize(
    ("mixed", "base"), [("bf16", "auto"), ("fp16", "auto"), ("no", "bf16"), ("bf16", "fp32")]
)
def test_the_adapter_its_optimizer_state_and_ema_are_float32_over_any_base(run, mixed, base):
    probe = DtypeProbe()
    outputs, steps = run(
        extra=[probe], mixed_precision=mixed, base_model_default_dtype=base, use_ema=True, max_train_steps=30
    )
    expected_base = LOW.get(mixed if base == "auto" else base, torch.float32)
    assert probe.frozen == {expected_base} and probe.trainable == {torch.float32}
    state = read_checkpoint(outputs["checkpoint"])[0]
    assert {p.dtype for p in state["params"]} == {torch.float32}
    moments = [v for s in state["optimizer"]["state"].values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert moments and {m.dtype for m in moments} == {torch.float32}
    assert {e.dtype for e in state["ema"]} == {torch.float32}
    losses = [s["loss"] for s in steps]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10]), "the loss falls"


def test_fp16_steps_whose_gradients_overflow_are_skipped_counted_and_logged(run, capsys):
    outputs, steps = run(
        family=LossSpike({4}), mixed_precision="fp16", use_ema=True, max_train_steps=6, checkpoint_step_interval=1
    )
    assert [s.get("skipped", 0.0) for s in steps] == [0, 0, 0, 1.0, 0, 0]
    scales = [s["loss_scale"] for s in steps]
    assert scales[3] == scales[2] / 2, "the scaler backed off"
    out = run.folder / "out"
    before = read_checkpoint(out / "checkpoint-3")[0]
    after = read_checkpoint(out / "checkpoint-4")[0]
    assert all(torch.equal(a, b) for a, b in zip(before["params"], after["params"])), "no update at step 4"
    assert all(torch.equal(a, b) for a, b in zip(before["ema"], after["ema"])), "nor an EMA update"
    assert after["overflow_steps"] == 1 and after["scaler"]["scale"] == scales[3]
    assert "1 of 6 updates were skipped" in capsys.readouterr().err
    assert all(torch.isfinite(v).all() for v in load_file(outputs["adapter"]).values())


@pytest.mark.parametrize("mixed", ["bf16", "fp16"])
def test_resume_is_bit_exact_in_each_precision(run, mixed):
    options = dict(mixed_precision=mixed, use_ema=True, ema_decay=0.8, max_train_steps=6, checkpoint_step_interval=3)
    straight, _ = run(name="straight", **options)
    run(name="resumed", **{**options, "max_train_steps": 3})
    resumed, steps = run(name="resumed", resume_from_checkpoint="latest", **options)
    assert [s["step"] for s in steps][-3:] == [4, 5, 6]
    for key in ("adapter", "ema_adapter"):
        a, b = load_file(straight[key]), load_file(resumed[key])
        assert all(torch.equal(a[k], b[k]) for k in a), key
    state_a = read_checkpoint(straight["checkpoint"])[0]
    state_b = read_checkpoint(resumed["checkpoint"])[0]
    assert state_a["scaler"] == state_b["scaler"] and (state_a["scaler"] is None) == (mixed == "bf16")


def test_save_dtype_writes_the_files_in_that_dtype_and_changes_nothing_else(run):
    files = {}
    for dtype in ("fp32", "bf16", "fp16"):
        outputs, steps = run(name=dtype, save_dtype=dtype, use_ema=True, max_train_steps=4, mixed_precision="bf16")
        files[dtype] = (load_file(outputs["adapter"]), load_file(outputs["ema_adapter"]), steps)
        inside = load_file(outputs["checkpoint"] / "pytorch_lora_weights.safetensors")
        wanted = {"fp32": torch.float32, **LOW}[dtype]
        assert {v.dtype for f in (files[dtype][0], files[dtype][1], inside) for v in f.values()} == {wanted}
    reference_adapter, reference_ema, reference_steps = files["fp32"]
    for dtype in ("bf16", "fp16"):
        adapter, ema, steps = files[dtype]
        assert [s["loss"] for s in steps] == [s["loss"] for s in reference_steps], "training did not change"
        assert all(torch.equal(adapter[k], v.to(LOW[dtype])) for k, v in reference_adapter.items())
        assert all(torch.equal(ema[k], v.to(LOW[dtype])) for k, v in reference_ema.items())


@pytest.mark.parametrize("method", ["norm", "value"])
@pytest.mark.parametrize("mixed", ["no", "bf16", "fp16"])
@pytest.mark.parametrize("limit", [0.0, 1e-3])
def test_every_clip_method_trains_in_every_precision(run, method, mixed, limit):
    outputs, steps = run(
        name=f"{method}-{mixed}-{limit}", mixed_precision=mixed, grad_clip_method=method, max_grad_norm=limit,
        max_train_steps=2,
    )
    assert len(steps) == 2 and all(math.isfinite(s["loss"]) and s["grad_norm"] > 0 for s in steps)
    assert all(torch.isfinite(v).all() for v in load_file(outputs["adapter"]).values())


"""Optimizers, schedules, clipping, EMA, timesteps, run length, NaN safety and exact resume (toy family)."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from tuner import hookimpl
from tuner.config import resolve_config
from tuner.data.synthetic import write_synthetic_clips
from tuner.errors import ConfigError, PluginError
from tuner.plugins import PluginHost
from tuner.report.jsonlog import read_log
from tuner.testing.toy import ToyFamily, toy_config
from tuner.train.checkpoints import read_checkpoint
from tuner.train.ema import EMA
from tuner.train.run import TrainingDiverged, train
from tuner.train.schedules import lr_curve
from tuner.train.timesteps import auto_shift, sample_sigmas, shift_sigmas


@pytest.fixture
def toy(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=4, num_frames=3, width=16, height=16)
    family = ToyFamily()
    host = PluginHost.build([], extra={"toy": family})

    def run(name="out", validation=False, **train_options):
        cfg = toy_config(tmp_path, **train_options)
        cfg["train"]["output_dir"] = str(tmp_path / name)
        if not validation:
            cfg["validation"]["validation_prompt"] = None
        config = resolve_config(cfg, host)
        outputs = train(config, host)
        return outputs, [r for r in read_log(tmp_path / name) if r["event"] == "step"]

    run.host, run.family, run.folder = host, family, tmp_path
    return run


OPTIMIZERS = [
    "adamw", "adamw_bf16", "optimi-adamw", "optimi-adam", "optimi-lion", "optimi-stableadamw",
    "optimi-radam", "optimi-ranger", "optimi-adan", "optimi-sgd", "prodigy",
]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_trains(toy, name):
    lr = 1.0 if name == "prodigy" else 1e-2
    outputs, steps = toy(optimizer=name, max_train_steps=4, learning_rate=lr)
    assert len(steps) == 4 and all(math.isfinite(s["loss"]) for s in steps)
    weights = load_file(outputs["adapter"])
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in weights.items()), "the adapter moved"
    state = read_checkpoint(outputs["checkpoint"])[0]
    # adamw_bf16 keeps the adapter in bf16 by design; every other optimizer trains float32. The
    # exported file follows save_dtype (fp32 by default) either way.
    assert {p.dtype for p in state["params"]} == {torch.bfloat16 if name == "adamw_bf16" else torch.float32}
    assert {v.dtype for v in weights.values()} == {torch.float32}


def test_a_lycoris_config_beside_standard_lora_is_named_as_unused(toy, capsys):
    """The guide's example sets lycoris_config with lora_type = "standard": it trains LoRA, and says so."""
    outputs, _ = toy(max_train_steps=1, lycoris_config="lycoris_config.json")
    assert "lycoris_config is not used: lora_type is 'standard'" in capsys.readouterr().err
    assert any(k.endswith("lora_A.weight") for k in load_file(outputs["adapter"]))


def test_bitsandbytes_optimizers_fail_at_start_up_on_cpu(toy):
    with pytest.raises(PluginError, match="needs bitsandbytes on a CUDA GPU.*use 'optimi-lion'"):
        toy(optimizer="bnb-adamw8bit")
    assert "compute_loss" not in toy.family.calls, "refused before any work"


def _closed_form(name, step, total, warmup, peak, cycles=1, power=1.0):
    """The LR before optimizer step ``step`` (0-based), as the schedules define it."""
    if name == "constant":
        return peak
    if step < warmup:
        return peak * step / max(1, warmup)
    if name == "constant_with_warmup":
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    if name == "linear":
        return peak * max(0.0, 1 - progress)
    if name == "cosine":
        return peak * max(0.0, 0.5 * (1 + math.cos(math.pi * progress)))
    if name == "cosine_with_restarts":
        return peak * max(0.0, 0.5 * (1 + math.cos(math.pi * ((cycles * progress) % 1.0))))
    if name == "polynomial":
        end = 1e-7
        return (peak - end) * (1 - progress) ** power + end


@pytest.mark.parametrize("name", ["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"])
def test_lr_schedule_matches_its_closed_form(toy, name):
    from tuner.train.settings import TrainSection

    tc = TrainSection(lr_scheduler=name, lr_warmup_steps=3, learning_rate=0.1, lr_num_cycles=2, lr_power=2.0)
    curve = lr_curve(tc, 12)
    expected = [_closed_form(name, s, 12, 3, 0.1, cycles=2, power=2.0) for s in range(12)]
    assert curve == pytest.approx(expected, abs=1e-9)
    _, steps = toy(lr_scheduler=name, lr_warmup_steps=3, learning_rate=0.1, lr_num_cycles=2, lr_power=2.0, max_train_steps=12)
    # The logged lr is the one in effect after the step (the schedule has advanced).
    assert [s["lr"] for s in steps[:-1]] == pytest.approx(curve[1:], abs=1e-9)


def test_warmup_longer_than_the_run_warns(toy, capsys):
    toy(lr_scheduler="cosine", lr_warmup_steps=400000, max_train_steps=2)
    assert "never reaches learning_rate" in capsys.readouterr().err


class _Grads:
    """A stand-in trainer state: params with known gradients."""

    def __init__(self, method, max_norm):
        from accelerate import Accelerator

        from tuner.train.settings import TrainSection
        from tuner.train.trainer import Trainer

        self.params = [torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(3))]
        self.params[0].grad = torch.tensor([3.0, -4.0, 0.5, 0.0])
        self.params[1].grad = torch.tensor([10.0, 0.1, -12.0])
        adapter = type("A", (), {"params": self.params})()
        config = type("C", (), {"train": TrainSection(grad_clip_method=method, max_grad_norm=max_norm)})()
        self.trainer = Trainer(None, config, None, [], adapter, None, None, Accelerator(cpu=True), None)


def test_clipping_by_norm_bounds_the_global_norm():
    grads = _Grads("norm", 2.0)
    before = grads.trainer._clip()
    assert before == pytest.approx(math.sqrt(9 + 16 + 0.25 + 100 + 0.01 + 144))
    after = torch.linalg.vector_norm(torch.cat([p.grad for p in grads.params]))
    assert after == pytest.approx(2.0, rel=1e-5)


def test_clipping_by_value_bounds_every_element():
    grads = _Grads("value", 1.0)
    grads.trainer._clip()
    assert torch.equal(grads.params[0].grad, torch.tensor([1.0, -1.0, 0.5, 0.0]))
    assert torch.equal(grads.params[1].grad, torch.tensor([1.0, 0.1, -1.0]))


def test_ema_equals_its_closed_form():
    param = torch.nn.Parameter(torch.tensor([0.0]))
    ema = EMA([param], decay=0.9, interval=2)
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    for step, value in enumerate(values, start=1):
        param.data.fill_(value)
        ema.update(step)
    expected = 0.0
    for step, value in enumerate(values, start=1):
        if step % 2 == 0:
            expected = 0.9 * expected + 0.1 * value
    assert ema.shadow[0].item() == pytest.approx(expected)
    with ema.applied():
        assert param.item() == pytest.approx(expected)
    assert param.item() == 6.0


def test_ema_updates_every_tensor_in_one_fused_foreach_kernel():
    from torch.profiler import profile

    params = [torch.nn.Parameter(torch.full((3,), float(i))) for i in range(4)]
    ema = EMA(params, decay=0.5)
    for p in params:
        p.data.add_(2.0)
    with profile() as prof:
        ema.update(1)
    names = [e.name for e in prof.events()]
    assert names.count("aten::_foreach_lerp_") == 1  # on CPU it loops inside; on CUDA it is one fused kernel
    assert [s.tolist() for s in ema.shadow] == [[i + 1.0] * 3 for i in range(4)]


def test_ema_run_exports_its_own_adapter(toy):
    outputs, _ = toy(use_ema=True, ema_decay=0.5, max_train_steps=3)
    raw, ema = load_file(outputs["adapter"]), load_file(outputs["ema_adapter"])
    assert raw.keys() == ema.keys()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    assert (toy.folder / "out" / "checkpoint-3" / "pytorch_lora_weights_ema.safetensors").is_file()


def test_resume_is_bit_exact_with_optimizer_schedule_ema_and_accumulation(toy):
    options = dict(
        optimizer="optimi-adamw", lr_scheduler="cosine", lr_warmup_steps=2, use_ema=True, ema_decay=0.8,
        gradient_accumulation_steps=2, train_batch_size=2, lora_dropout=0.1, max_train_steps=8,
    )
    straight, _ = toy(name="straight", **options)

    class CtrlC:
        @hookimpl
        def on_step_end(self, run, step, logs):
            if step == 4:
                raise KeyboardInterrupt  # as if the user pressed Ctrl-C after step 4

    interrupted = PluginHost.build([], extra={"toy": toy.family, "ctrl-c": CtrlC()})
    cfg = toy_config(toy.folder, **options)
    cfg["train"]["output_dir"] = str(toy.folder / "resumed")
    cfg["validation"]["validation_prompt"] = None
    with pytest.raises(KeyboardInterrupt):
        train(resolve_config(cfg, interrupted), interrupted)
    assert (toy.folder / "resumed" / "checkpoint-4").is_dir(), "Ctrl-C keeps the finished steps"
    resumed, steps = toy(name="resumed", resume_from_checkpoint="latest", **options)
    assert [s["step"] for s in steps][-4:] == [5, 6, 7, 8]
    for key in ("adapter", "ema_adapter"):
        a, b = load_file(straight[key]), load_file(resumed[key])
        assert all(torch.equal(a[k], b[k]) for k in a), key
    state_a, _ = read_checkpoint(straight["checkpoint"])
    state_b, _ = read_checkpoint(resumed["checkpoint"])
    assert all(torch.equal(x, y) for x, y in zip(state_a["params"], state_b["params"]))
    assert state_a["schedule"] == state_b["schedule"]


def test_epochs_decide_the_length_when_steps_are_zero(toy):
    # 4 clips, batch 2 -> 2 micro-batches an epoch; accumulation 1 -> 2 steps an epoch.
    _, steps = toy(max_train_steps=0, num_train_epochs=3, train_batch_size=2)
    assert len(steps) == 6


def test_both_limits_stop_at_the_first_unless_final_epochs_are_ignored(toy):
    _, steps = toy(name="a", max_train_steps=10, num_train_epochs=2, train_batch_size=2)
    assert len(steps) == 4
    _, steps = toy(name="b", max_train_steps=10, num_train_epochs=2, train_batch_size=2, ignore_final_epochs=True)
    assert len(steps) == 10


def test_no_length_at_all_is_refused():
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    with pytest.raises(ConfigError, match="set max_train_steps or num_train_epochs"):
        resolve_config({"train": {"max_train_steps": 0}}, host)


class _NanAt(ToyFamily):
    def __init__(self, bad_steps):
        super().__init__()
        self.bad_steps = set(bad_steps)

    @hookimpl
    def compute_loss(self, bundle, batch, generator, config):  # type: ignore[override]
        out = super().compute_loss(bundle, batch, generator, config)
        if self.calls["compute_loss"] in self.bad_steps:
            out.loss = out.loss * float("nan")
        return out


def _nan_run(tmp_path, family, **train_options):
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    host = PluginHost.build([], extra={"toy": family})
    cfg = toy_config(tmp_path, max_train_steps=6, checkpoint_step_interval=2, **train_options)
    cfg["validation"]["validation_prompt"] = None
    return train(resolve_config(cfg, host), host)


def test_nan_loss_stops_at_its_step_and_keeps_the_last_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match="at step 3;"):
        _nan_run(tmp_path, _NanAt({3}))
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    state, _ = read_checkpoint(out / "checkpoint-2")
    assert all(torch.isfinite(p).all() for p in state["params"])


def test_nan_loss_can_be_skipped(tmp_path):
    outputs = _nan_run(tmp_path, _NanAt({3}), on_nan_loss="skip")
    steps = [r for r in read_log(tmp_path / "out") if r["event"] == "step"]
    assert [s.get("skipped", 0.0) for s in steps] == [0, 0, 1.0, 0, 0, 0]
    assert all(torch.isfinite(v).all() for v in load_file(outputs["adapter"]).values())


def test_sigma_sampling_distributions_and_shift():
    g = torch.Generator().manual_seed(0)
    uniform = sample_sigmas(20000, g, distribution="uniform")
    assert uniform.mean().item() == pytest.approx(0.5, abs=0.01)
    assert (uniform < 0.1).float().mean().item() == pytest.approx(0.1, abs=0.01)
    logit = sample_sigmas(20000, g, logit_std=1.0)
    assert (logit < 0.1).float().mean().item() < 0.05, "logit-normal is thin at the ends"
    shifted = sample_sigmas(20000, torch.Generator().manual_seed(1), shift=3.0)
    assert shifted.mean().item() > 0.6
    s = torch.tensor([0.25])
    assert shift_sigmas(s, 3.0).item() == pytest.approx(0.75 / 1.5)


def test_auto_shift_grows_with_resolution():
    assert auto_shift(256 * 256) == pytest.approx(math.exp(0.5))
    assert auto_shift(1024 * 1024) == pytest.approx(math.exp(1.15))
    assert auto_shift(832 * 480) > auto_shift(480 * 480)


def test_plot_commands_write_pngs(toy_run, cli, tmp_path):
    config = toy_run(steps=50, overrides=["train.lr_scheduler='cosine'", "train.lr_warmup_steps=10"])
    lr = cli(["plot", "lr", "--config", str(config), "--out", str(tmp_path / "lr.png")])
    ts = cli(["plot", "timesteps", "--config", str(config), "--out", str(tmp_path / "ts.png"), "--set", "train.flow_schedule_auto_shift=true"])
    assert lr.exit_code == 0 and ts.exit_code == 0
    for name in ("lr.png", "ts.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_gradient_checkpointing_needs_a_family_that_supports_it(toy):
    with pytest.raises(PluginError, match="does not support gradient_checkpointing"):
        toy(gradient_checkpointing=True)

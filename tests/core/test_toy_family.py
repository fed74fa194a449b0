"""A non-Wan family trains through the same core: the core is model-agnostic in fact."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from safetensors.torch import load_file

from tuner.config import resolve_config
from tuner.data.synthetic import write_synthetic_clips
from tuner.errors import PluginError
from tuner.plugins import PluginHost
from tuner.report.jsonlog import read_log
from tuner.testing.toy import ToyFamily, ToyRoutingFeature, toy_config
from tuner.train.run import train


@pytest.fixture
def toy_run(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    family = ToyFamily()
    host = PluginHost.build([], extra={"toy": family})
    return tmp_path, family, host


def test_toy_family_trains_through_the_core(toy_run):
    folder, family, host = toy_run
    config = resolve_config(toy_config(folder), host)
    outputs = train(config, host)
    losses = [r["loss"] for r in read_log(folder / "out") if r["event"] == "step"]
    assert len(losses) == 40
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    # No export hook: the adapter keeps peft's names, without the adapter suffix.
    keys = list(load_file(outputs["adapter"]))
    assert "inp.lora_A.weight" in keys and not [k for k in keys if "default" in k]
    assert family.calls["load_model"] == 1
    assert family.calls["encode_batch"] == 2  # vae_batch_size 1, two clips
    assert family.calls["compute_loss"] == 40
    assert (folder / "out" / "validation" / "step-40" / "main.png").is_file()


def test_cache_is_reused_on_a_second_run(toy_run):
    folder, family, host = toy_run
    train(resolve_config(toy_config(folder, max_train_steps=2), host), host)
    assert family.calls["encode_batch"] == 2 and family.calls["encode_prompts"] == 1
    train(resolve_config(toy_config(folder, max_train_steps=2, overwrite_output_dir=True), host), host)
    assert family.calls["encode_batch"] == 2 and family.calls["encode_prompts"] == 1, "nothing re-encoded"
    assert not [t for t in threading.enumerate() if t.name.startswith("tuner-")], "a finished run leaves no thread"


def test_hook_prepare_model_runs_before_and_after_the_adapter(toy_run):
    folder, family, host = toy_run
    train(resolve_config(toy_config(folder, max_train_steps=1), host), host)
    (phase1, trainable1), (phase2, trainable2) = family.prepare_phases
    assert (phase1, trainable1) == ("base", 0)
    assert phase2 == "adapted" and trainable2 > 0


def test_hook_route_tokens_needs_a_family_that_supports_it(toy_run):
    folder, family, _ = toy_run
    host = PluginHost.build([], extra={"toy": family, "router": ToyRoutingFeature()})
    with pytest.raises(PluginError, match="family 'toy' does not support it"):
        train(resolve_config(toy_config(folder, max_train_steps=1), host), host)


def test_hook_validate_sees_eval_mode_and_no_router(toy_run):
    folder, _, _ = toy_run
    family = ToyFamily(supports_routing=True)
    host = PluginHost.build([], extra={"toy": family, "router": ToyRoutingFeature()})
    train(resolve_config(toy_config(folder, max_train_steps=1), host), host)
    assert family.validate_saw_router is None and family.validate_saw_training is False


def test_family_hooks_go_only_to_the_configured_family(tmp_path):
    """Two families active: only the one named by model_family is asked."""
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)

    class Other(ToyFamily):
        def register_model_families(self, register):  # type: ignore[override]
            register("other", "")

        def register_config_sections(self, register):  # type: ignore[override]
            pass

    toy, other = ToyFamily(), Other()
    # Re-mark the overridden hooks so pluggy sees them.
    from tuner import hookimpl

    hookimpl(Other.register_model_families)
    hookimpl(Other.register_config_sections)
    host = PluginHost.build([], extra={"toy": toy, "other": other})
    assert set(host.families) == {"toy", "other"}
    train(resolve_config(toy_config(tmp_path, max_train_steps=2), host), host)
    assert toy.calls["compute_loss"] == 2 and "compute_loss" not in other.calls


def test_a_family_with_two_experts_trains_one_adapter_on_each(toy_run):
    """ModelBundle.experts: each sample goes to its expert, both adapters train, one file each, exact resume."""
    import torch

    folder, family, host = toy_run
    config = toy_config(folder, max_train_steps=12, train_batch_size=2, checkpoint_step_interval=6)
    config["toy"] = {"toy_experts": 2}
    outputs = train(resolve_config(config, host), host)
    assert family.expert_samples["high"] > 0 and family.expert_samples["low"] > 0
    assert family.expert_samples["high"] + family.expert_samples["low"] == 24
    high, low = load_file(outputs["adapter_high"]), load_file(outputs["adapter_low"])
    assert outputs["adapter_high"].name == "pytorch_lora_weights_high.safetensors" and "adapter" not in outputs
    assert all(v.abs().sum() > 0 for k, v in {**high, **low}.items() if "lora_B" in k), "both adapters trained"
    assert not torch.equal(high["inp.lora_B.weight"], low["inp.lora_B.weight"])
    # Resume from step 6 in a second folder: both adapters end bit-identical.
    (folder / "out2").mkdir()
    import shutil

    shutil.copytree(folder / "out" / "checkpoint-6", folder / "out2" / "checkpoint-6")
    resumed = dict(config, train={**config["train"], "output_dir": str(folder / "out2"), "resume_from_checkpoint": "latest"})
    again = train(resolve_config(resumed, host), host)
    for key in ("adapter_high", "adapter_low"):
        a, b = load_file(outputs[key]), load_file(again[key])
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_family_whose_tiny_model_has_one_width_refuses_real_width_in_one_line(tmp_path):
    from tuner import hookimpl

    class OneWidth(ToyFamily):
        @hookimpl
        def write_tiny_model(self, path, seed, variant):  # no real_width_blocks: the hook's older form
            return {"toy.path": str(path)}

    host = PluginHost.build([], extra={"toy": OneWidth()})
    family = host.resolve_family(None)
    assert host.write_tiny_model(family, tmp_path, 0) == {"toy.path": str(tmp_path)}
    with pytest.raises(PluginError, match="cannot write its model at real width.*no real_width_blocks parameter"):
        host.write_tiny_model(family, tmp_path, 0, real_width_blocks=1)


def test_the_installed_toy_family_loads_without_torch(toy_installed):
    """Found through its entry point by a new process (PYTHONPATH) and loaded, as a family's plugin module is, without torch."""
    import subprocess
    import sys

    code = "import sys; from tuner.plugins import PluginHost; PluginHost.build(['toy']); print(sorted(m for m in ('torch',) if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]"]

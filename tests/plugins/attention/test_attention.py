"""The attention plugin: kernels from diffusers' dispatcher, start-up errors, validation-only kernels."""

from __future__ import annotations

import pytest
import torch

from tuner.config import resolve_config
from tuner.errors import ConfigError
from tuner.plugins import PluginHost
from tuner.testing.runs import run_output_dir, step_losses
from tuner.types.bundle import ModelBundle

PLUGINS = "plugins=['wan','attention']"
NO_VALIDATION = "validation.validation_prompt=''"


def tiny_wan():
    from diffusers import WanTransformer3DModel

    from tuner_wan.tiny import TINY_TRANSFORMER

    torch.manual_seed(0)
    return WanTransformer3DModel(**TINY_TRANSFORMER).requires_grad_(False)


def test_every_mechanism_is_a_backend_of_diffusers_dispatcher():
    from diffusers.models.attention_dispatch import AttentionBackendName

    from tuner_attention.backends import BACKENDS, MechanismName

    assert set(BACKENDS) == set(MechanismName.__args__)
    known = {b.value for b in AttentionBackendName}
    assert {b.diffusers for b in BACKENDS.values() if b.diffusers} <= known
    assert not [n for n, b in BACKENDS.items() if "sage" in n and b.backward], "SageAttention has no backward pass"


def test_unknown_mechanism_is_a_config_error():
    host = PluginHost.build(["wan", "attention"])
    with pytest.raises(ConfigError, match="attention_mechanism"):
        resolve_config({"attention_mechanism": "sage"}, host)


def test_training_with_a_forced_sdpa_kernel_matches_the_default(make_run, cli):
    runs = {}
    for name in ("diffusers", "sdpa-math", "sdpa-flash"):
        config = make_run(name=name, steps=2, overrides=[PLUGINS, NO_VALIDATION, f"attention_mechanism='{name}'"])
        result = cli(["train", "--config", str(config)])
        assert result.exit_code == 0, result.stderr
        assert (f"attention: {name} in 4 attention layers" in result.stderr) == (name != "diffusers")
        runs[name] = step_losses(run_output_dir(config))
    assert runs["sdpa-math"] == pytest.approx(runs["diffusers"], rel=1e-5)
    assert runs["sdpa-flash"] == pytest.approx(runs["diffusers"], rel=1e-5)


@pytest.mark.parametrize(
    "mechanism, missing",
    [
        ("sageattention", ["needs a CUDA device (this run is on cpu)", "sageattention>=", "PyPI serves sageattention 1.0.x only"]),
        ("flash-attn", ["a CUDA device", "bf16 or fp16 activations", "flash-attn>="]),
        ("sdpa-cudnn", ["a CUDA device", "bf16 or fp16"]),
    ],
)
def test_a_kernel_that_cannot_run_here_stops_the_run_at_start_up(make_run, cli, mechanism, missing):
    config = make_run(steps=1, overrides=[PLUGINS, NO_VALIDATION, f"attention_mechanism='{mechanism}'"])
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error:") and f"attention_mechanism = '{mechanism}' cannot run here" in line
    for thing in missing:
        assert thing in line
    assert "Use 'diffusers'" in line
    assert not list(config.parent.glob("cache/**/*.safetensors")), "it fails before any clip is encoded"


def test_installing_leaves_the_process_wide_default_alone():
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    from tuner_attention.backends import install

    before = _AttentionBackendRegistry.get_active_backend()[0]
    model = tiny_wan()
    install(model, "sdpa-math")
    assert _AttentionBackendRegistry.get_active_backend()[0] == before
    assert {m.processor._attention_backend.value for m in model.modules() if hasattr(m, "processor")} == {"_native_math"}


def test_a_kernel_without_backward_serves_only_forward_passes_without_gradients(monkeypatch, capsys):
    """What SageAttention gets, shown with a kernel that runs on a CPU posing as forward-only."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    from tuner_attention import backends

    monkeypatch.setitem(backends.BACKENDS, "sdpa-math", backends.Backend("_native_math", cuda=False, backward=False))
    host = PluginHost.build(["wan", "attention"])
    model = tiny_wan()
    config = resolve_config({"attention_mechanism": "sdpa-math"}, host)
    host.prepare_model(ModelBundle("wan", model, []), config, "base", torch.device("cpu"))
    assert "has no backward pass: training uses PyTorch SDPA" in capsys.readouterr().err
    processors = [m.processor for m in model.modules() if hasattr(m, "processor")]
    x, e = torch.randn(1, 16, 1, 4, 4), torch.randn(1, 3, 32)

    def run(grad: bool) -> set:
        with torch.set_grad_enabled(grad):
            model(hidden_states=x, timestep=torch.tensor([10.0]), encoder_hidden_states=e)
        return {p._attention_backend for p in processors}

    assert run(grad=False) == {AttentionBackendName("_native_math")}  # validation
    assert run(grad=True) == {None}  # training: diffusers' default, PyTorch SDPA

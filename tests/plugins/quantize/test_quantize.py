"""The quantize plugin: a quanto-quantized base under a full-precision LoRA, and what a family refuses."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file

from tuner.config import resolve_config
from tuner.errors import PluginError
from tuner.plugins import PluginHost
from tuner.testing.runs import run_output_dir, step_losses
from tuner.types.bundle import ModelBundle

quanto = pytest.importorskip("optimum.quanto")

PLUGINS = "plugins=['wan','quantize']"
NO_VALIDATION = "validation.validation_prompt=''"


@pytest.fixture(scope="module")
def host():
    return PluginHost.build(["wan", "quantize"])


def loaded_tiny_wan(host, tiny_model_dir, **options):
    from tuner_wan.tiny import TINY_MAX_SEQUENCE_LENGTH

    raw = {
        "wan": {"pretrained_model_name_or_path": str(tiny_model_dir("wan")), "max_sequence_length": TINY_MAX_SEQUENCE_LENGTH},
        **options,
    }
    config = resolve_config(raw, host)
    bundle = host.load_model(config, torch.device("cpu"))
    return bundle, config


def test_lora_trains_on_top_of_the_quantized_blocks_and_nothing_else_trains(host, tiny_model_dir):
    from peft import LoraConfig, inject_adapter_in_model

    bundle, config = loaded_tiny_wan(host, tiny_model_dir, base_model_precision="int8-quanto", quantize_via="cpu")
    host.prepare_model(bundle, config, "base", torch.device("cpu"))
    model = bundle.denoiser
    assert isinstance(model.blocks[0].attn1.to_q, quanto.QLinear)
    assert not isinstance(model.proj_out, quanto.QLinear), "only the blocks are quantized"
    inject_adapter_in_model(LoraConfig(r=4, target_modules=bundle.lora_target_modules), model)
    assert isinstance(model.blocks[0].attn1.to_q.base_layer, quanto.QLinear)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


def test_training_on_an_int8_base_stays_close_to_the_full_precision_run(make_run, cli):
    runs = {}
    for name, options in (("full", []), ("int8", ["base_model_precision='int8-quanto'"])):
        config = make_run(name=name, steps=3, overrides=[PLUGINS, NO_VALIDATION, *options])
        result = cli(["train", "--config", str(config)])
        assert result.exit_code == 0, result.stderr
        runs[name] = config
    assert "quantized base: 20 layers of the denoiser in int8-quanto" in result.stderr
    full, int8 = step_losses(run_output_dir(runs["full"])), step_losses(run_output_dir(runs["int8"]))
    assert full != int8 and int8 == pytest.approx(full, rel=1e-2)
    a = load_file(run_output_dir(runs["full"]) / "pytorch_lora_weights.safetensors")
    b = load_file(run_output_dir(runs["int8"]) / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys(), "the exported adapter is the same LoRA, in diffusers' names"


@pytest.mark.parametrize("precision", ["int4-quanto", "int2-quanto"])
def test_wan_refuses_four_bit_and_lower_with_the_reason(make_run, cli, precision):
    config = make_run(steps=1, overrides=[PLUGINS, NO_VALIDATION, f"base_model_precision='{precision}'"])
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 2
    line = result.stderr.strip().splitlines()[-1]
    assert f"base_model_precision = '{precision}' is refused for model family 'wan'" in line
    assert "sensitive to quantization" in line and "use int8-quanto" in line


def test_the_refusal_comes_from_the_family_not_the_plugin(host):
    """Another family that names no refusals gets int4 (the plugin knows no family)."""
    from diffusers import WanTransformer3DModel

    from tuner_wan.tiny import TINY_TRANSFORMER

    model = WanTransformer3DModel(**TINY_TRANSFORMER).requires_grad_(False)
    config = resolve_config({"base_model_precision": "int4-quanto"}, host)
    host.prepare_model(ModelBundle("other", model, [], block_lists=["blocks"]), config, "base", torch.device("cpu"))
    assert isinstance(model.blocks[0].ffn.net[2], quanto.QLinear)
    refusing = ModelBundle("other", model, [], refused_precisions={"int4-quanto": "too coarse for it"})
    with pytest.raises(PluginError, match="refused for model family 'other': too coarse for it"):
        host.prepare_model(refusing, config, "base", torch.device("cpu"))


def test_quantizing_the_text_encoder_changes_the_cache_id(host, tiny_model_dir):
    bundle, config = loaded_tiny_wan(host, tiny_model_dir, text_encoder_1_precision="int8-quanto")
    before = bundle.cache_id
    host.prepare_model(bundle, config, "base", torch.device("cpu"))
    assert bundle.cache_id != before and bundle.cache_id.endswith("text_encoder:int8-quanto")
    assert any(isinstance(m, quanto.QLinear) for m in bundle.components["text_encoder"].modules())
    assert not any(isinstance(m, quanto.QLinear) for m in bundle.denoiser.modules())


def test_quantize_via_without_quantization_is_accepted_and_said(host, tiny_model_dir, capsys):
    """The guide's example sets quantize_via = "cpu" beside base_model_precision = "no_change"."""
    bundle, config = loaded_tiny_wan(host, tiny_model_dir, base_model_precision="no_change", quantize_via="cpu")
    host.prepare_model(bundle, config, "base", torch.device("cpu"))
    assert "quantize_via has no effect" in capsys.readouterr().err
    assert not any(isinstance(m, quanto.QLinear) for m in bundle.denoiser.modules())


def test_a_missing_optimum_quanto_is_named(host, monkeypatch):
    from diffusers import WanTransformer3DModel

    from tuner_wan.tiny import TINY_TRANSFORMER

    monkeypatch.setitem(sys.modules, "optimum.quanto", None)  # import fails as if not installed
    config = resolve_config({"base_model_precision": "int8-quanto"}, host)
    bundle = ModelBundle("wan", WanTransformer3DModel(**TINY_TRANSFORMER), [], block_lists=["blocks"])
    with pytest.raises(PluginError, match=r"needs optimum-quanto: pip install 'tuner\[quanto\]'"):
        host.prepare_model(bundle, config, "base", torch.device("cpu"))


def test_a_second_text_encoder_precision_needs_a_second_text_encoder(host, tiny_model_dir):
    bundle, config = loaded_tiny_wan(host, tiny_model_dir, text_encoder_2_precision="int8-quanto")
    with pytest.raises(PluginError, match="text_encoder_2_precision: model family 'wan' has 1 text encoder"):
        host.prepare_model(bundle, config, "base", torch.device("cpu"))

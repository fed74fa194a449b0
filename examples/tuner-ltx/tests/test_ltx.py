"""What the contract kit cannot know about LTX-Video: its pipeline's conventions, its file layouts, its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import tuner_ltx.plugin
from tuner_ltx.tiny import write_tiny_ltx

from tuner.config import resolve_config
from tuner.errors import ConfigError
from tuner.plugins import PluginHost
from tuner.types.adapter import AdapterWeights


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-ltx")
    write_tiny_ltx(path, seed=0)
    return path


def _bundle(model_dir: Path, **options: str):  # type: ignore[no-untyped-def]
    host = PluginHost.build([], extra={"ltx": tuner_ltx.plugin})
    raw = {"model_family": "ltx", "ltx_model_path": str(model_dir), "ltx_max_sequence_length": 32, **options}
    return host, host.load_model(resolve_config(raw, host), torch.device("cpu"))


def test_cached_prompts_feed_the_transformer_what_the_pipeline_feeds_it(model_dir: Path):
    # The cache keeps prompts unpadded and the collate zero-pads them; LTXPipeline pads with T5's
    # output for pad tokens. The attention mask must make the two identical.
    host, bundle = _bundle(model_dir)
    prompts = ["a red square moving left", "a cat"]
    with torch.no_grad():
        ours = host.collate_prompts(bundle, host.encode_prompts(bundle, prompts))
        embeds, mask, _, _ = bundle.components["pipeline"].encode_prompt(prompts, do_classifier_free_guidance=False,
                                                                          max_sequence_length=32)
        assert torch.equal(ours["prompt_attention_mask"], mask) and not torch.equal(ours["prompt_embeds"], embeds)
        x = torch.randn(2, 12, 16, generator=torch.Generator().manual_seed(0))
        common = dict(hidden_states=x, timestep=torch.tensor([300.0, 700.0]), num_frames=3, height=2, width=2,
                      rope_interpolation_scale=bundle.components["rope_scale"], return_dict=False)
        a = bundle.denoiser(encoder_hidden_states=ours["prompt_embeds"], encoder_attention_mask=ours["prompt_attention_mask"], **common)[0]
        b = bundle.denoiser(encoder_hidden_states=embeds, encoder_attention_mask=mask, **common)[0]
    assert torch.allclose(a, b, atol=1e-5)


def test_comfyui_file_loads_in_ltx_pipeline_like_the_diffusers_file(model_dir: Path, tmp_path: Path):
    from diffusers import LTXPipeline

    from tuner_ltx.model import save_adapter

    g = torch.Generator().manual_seed(0)
    module = "transformer_blocks.0.attn1.to_q"
    weights = AdapterWeights(
        kind="lora",
        tensors={f"{module}.lora_A.weight": torch.randn(4, 32, generator=g), f"{module}.lora_B.weight": torch.randn(32, 4, generator=g)},
        alphas={module: 2.0},
        ranks={module: 4},
    )
    outputs = []
    for layout in (None, "diffusers", "comfyui"):
        pipe = LTXPipeline.from_pretrained(str(model_dir))
        if layout is not None:
            path = save_adapter(weights, tmp_path / f"{layout}.safetensors", layout)
            pipe.load_lora_weights(str(path.parent), weight_name=path.name)
        x = torch.randn(1, 12, 16, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            outputs.append(pipe.transformer(hidden_states=x, encoder_hidden_states=torch.zeros(1, 4, 32), timestep=torch.tensor([500.0]),
                                            encoder_attention_mask=torch.ones(1, 4), num_frames=3, height=2, width=2, return_dict=False)[0])
    base, diffusers_file, comfyui_file = outputs
    assert not torch.allclose(base, diffusers_file, atol=1e-4), "the adapter changed nothing"
    assert torch.allclose(diffusers_file, comfyui_file, atol=1e-6)


def test_a_model_path_that_does_not_load_is_one_line_naming_the_option(tmp_path: Path):
    host = PluginHost.build([], extra={"ltx": tuner_ltx.plugin})
    config = resolve_config({"model_family": "ltx", "ltx_model_path": str(tmp_path / "missing")}, host)
    with pytest.raises(ConfigError, match=r"^ltx\.ltx_model_path: cannot load LTX-Video from .*missing"):
        host.load_model(config, torch.device("cpu"))


def test_the_transformer_comes_from_one_safetensors_file_or_a_folder_holding_it_at_its_root(model_dir: Path, tmp_path: Path):
    # The source options every family shares (tuner.loading): a fine-tune's transformer beside the base's other parts.
    from diffusers import LTXVideoTransformer3DModel
    from safetensors.torch import save_file

    write_tiny_ltx(tmp_path / "other", seed=1)
    weights = LTXVideoTransformer3DModel.from_pretrained(tmp_path / "other", subfolder="transformer").state_dict()
    save_file(weights, tmp_path / "finetune.safetensors")
    base = _bundle(model_dir)[1].denoiser.state_dict()
    assert not all(torch.equal(base[k], v) for k, v in weights.items())
    for options in (
        {"ltx_pretrained_transformer_model_name_or_path": str(tmp_path / "finetune.safetensors")},
        {"ltx_pretrained_transformer_model_name_or_path": str(tmp_path / "other" / "transformer"),
         "ltx_pretrained_transformer_subfolder": "none"},
    ):
        _, bundle = _bundle(model_dir, **options)
        loaded = bundle.denoiser.state_dict()
        assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], v) for k, v in weights.items()), options
        assert bundle.components["pipeline"].transformer is bundle.denoiser
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(ConfigError, match=rf"^ltx\.ltx_pretrained_transformer_model_name_or_path: no such file {missing}$"):
        _bundle(model_dir, ltx_pretrained_transformer_model_name_or_path=str(missing))


def test_an_unknown_tiny_variant_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="one tiny model shape"):
        write_tiny_ltx(tmp_path, variant="13b")


def test_crepa_aligns_ltx_frames_through_the_bundle_alone(tmp_path: Path):
    """tuner's CREPA knows no LTX file: hidden_size and token_grid in the bundle are all it needs."""
    import numpy as np
    from transformers import Dinov2Config, Dinov2Model

    from tuner.config import read_config_file
    from tuner.report.jsonlog import read_log
    from tuner.testing.runs import write_run_folder
    from tuner.train.run import train

    teacher = tmp_path / "dinov2-tiny"
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                             image_size=28)).save_pretrained(teacher)
    host = PluginHost.build(["crepa"], extra={"ltx": tuner_ltx.plugin})
    config = write_run_folder(tmp_path / "run", tmp_path / "model", plugin="ltx", steps=40, host=host, overrides=[
        "crepa_enabled=true", "crepa_block_index=0", f"crepa_encoder='{teacher}'", "crepa_encoder_image_size=28",
        "crepa_lambda=1.0", "train.learning_rate=0.03", "validation.validation_prompt=''",
    ])
    train(resolve_config(read_config_file(config), host, config.parent), host)
    out = config.parent / read_config_file(config)["train"]["output_dir"]
    aligned = [r["crepa_alignment"] for r in read_log(out) if r["event"] == "step"]
    assert len(aligned) == 40 and np.mean(aligned[-8:]) > np.mean(aligned[:8]) + 0.3

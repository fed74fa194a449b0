"""The Wan plugin's hooks on the tiny model: encoding matches WanPipeline, loading follows the guide's options."""

from __future__ import annotations

import json

import pytest
import torch

from tuner.config import resolve_config
from tuner.errors import ConfigError
from tuner.plugins import PluginHost


@pytest.fixture(scope="module")
def host():
    return PluginHost.build(["wan"])


@pytest.fixture(scope="module")
def bundle(host, tiny_model_dir):
    config = resolve_config({"wan": {"pretrained_model_name_or_path": str(tiny_model_dir("wan")), "max_sequence_length": 32}}, host)
    return host.load_model(config, torch.device("cpu"))


def test_hook_write_tiny_model_writes_the_diffusers_layout(tiny_model_dir):
    from diffusers import WanPipeline

    folder = tiny_model_dir("wan")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / sub).is_dir()
    pipe = WanPipeline.from_pretrained(str(folder))
    assert type(pipe.scheduler).__name__ == "UniPCMultistepScheduler"


def test_hook_encode_batch_gives_normalised_latents_the_vae_decodes_back(host, bundle):
    from tuner_wan.encode import latent_stats

    pixels = torch.rand(2, 9, 3, 32, 32) * 2 - 1
    encoded = host.encode_batch(bundle, pixels)
    assert len(encoded) == 2
    latents = encoded[0]["latents"]
    assert latents.shape == (16, 3, 4, 4)  # (9 - 1) / 4 + 1 frames, 32 / 8 pixels
    vae = bundle.components["vae"]
    mean, std = latent_stats(vae, latents[None])
    raw = vae.encode(pixels[:1].permute(0, 2, 1, 3, 4)).latent_dist.mode()
    assert torch.allclose(latents[None] * std + mean, raw, atol=1e-5)


def test_hook_encode_prompts_drops_padding(host, bundle):
    short, long = host.encode_prompts(bundle, ["a cat", "a red square moving right on a black background"])
    assert short["prompt_embeds"].shape[0] < long["prompt_embeds"].shape[0] <= 32
    assert short["prompt_embeds"].shape[1] == 32  # tiny text_dim


def test_hook_collate_prompts_matches_what_the_pipeline_feeds_at_inference(host, bundle):
    prompts = ["a cat", "a red square moving right on a black background"]
    batch = host.collate_prompts(bundle, host.encode_prompts(bundle, prompts))["prompt_embeds"]
    expected, _ = bundle.components["pipeline"].encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=32)
    assert batch.shape == expected.shape == (2, 32, 32)
    assert torch.allclose(batch, expected)


def test_transformer_from_a_single_safetensors_file(host, tiny_model_dir, tmp_path):
    """The guide's pretrained_transformer_model_name_or_path may be one .safetensors file."""
    from diffusers import WanTransformer3DModel
    from safetensors.torch import save_file

    folder = tiny_model_dir("wan")
    original = WanTransformer3DModel.from_pretrained(str(folder), subfolder="transformer")
    with torch.no_grad():
        original.blocks[0].attn1.to_q.weight.add_(1.0)  # a "fine-tuned" transformer
    single = tmp_path / "finetuned.safetensors"
    save_file(original.state_dict(), str(single))
    config = resolve_config(
        {"wan": {"pretrained_model_name_or_path": str(folder), "pretrained_transformer_model_name_or_path": str(single)}},
        host,
    )
    loaded = host.load_model(config, torch.device("cpu")).denoiser
    assert torch.equal(loaded.blocks[0].attn1.to_q.weight, original.blocks[0].attn1.to_q.weight)


def test_transformer_subfolder_none_reads_the_root(host, tiny_model_dir):
    folder = tiny_model_dir("wan")
    config = resolve_config(
        {
            "wan": {
                "pretrained_model_name_or_path": str(folder),
                "pretrained_transformer_model_name_or_path": str(folder / "transformer"),
                "pretrained_transformer_subfolder": "none",
            }
        },
        host,
    )
    assert host.load_model(config, torch.device("cpu")).denoiser.config.num_layers == 2


def test_missing_model_is_a_config_error(host, tmp_path):
    config = resolve_config({"wan": {"pretrained_model_name_or_path": str(tmp_path / "missing")}}, host)
    with pytest.raises(ConfigError, match="no such folder .*missing .the path looks local, so the Hub is not asked"):
        host.load_model(config, torch.device("cpu"))


def test_bf16_mixed_precision_stores_the_base_in_bf16_and_trains(make_run, cli):
    from tuner.report.jsonlog import read_log

    config = make_run(steps=3, overrides=["train.mixed_precision='bf16'", "validation.validation_prompt=''"])
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.output
    losses = [r["loss"] for r in read_log(config.parent / "output") if r["event"] == "step"]
    assert len(losses) == 3 and all(l == l for l in losses)


def test_prompt_token_counts_say_which_prompts_encode_prompts_cuts(host, bundle):
    long, short = "a red square moving right " * 12, "a red square"
    counts = bundle.count_prompt_tokens([long, short])
    assert bundle.max_prompt_tokens == 32 and counts[0] > 32 > counts[1]
    embeds = host.encode_prompts(bundle, [long, short])
    assert embeds[0]["prompt_embeds"].shape[0] == 32, "cut at max_sequence_length"
    assert embeds[1]["prompt_embeds"].shape[0] == counts[1], "the count is the tokens the encoder sees"

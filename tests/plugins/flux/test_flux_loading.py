"""Loading Flux: a diffusers folder, a single-file transformer, the caches' contents, clear errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tuner.config import resolve_config
from tuner.errors import ConfigError
from tuner.plugins import PluginHost


@pytest.fixture(scope="module")
def host():
    return PluginHost.build(["flux"])


def _config(host, model, **flux):
    return resolve_config(
        {"flux": {"flux_pretrained_model_name_or_path": str(model), "flux_t5_max_length": 32, **flux}}, host
    )


def _batch() -> dict[str, torch.Tensor]:
    """A cached batch of one 64x64 image (4 x 8 x 8 latents) and its tiny T5 / CLIP embeddings."""
    g = torch.Generator().manual_seed(0)
    return {
        "latents": torch.randn(1, 4, 8, 8, generator=g),
        "prompt_embeds": torch.randn(1, 32, 32, generator=g),
        "pooled_prompt_embeds": torch.randn(1, 32, generator=g),
    }


def test_transformer_from_a_single_safetensors_file(host, tiny_model_dir, tmp_path):
    from diffusers import FluxTransformer2DModel

    folder = tiny_model_dir("flux")
    reference = FluxTransformer2DModel.from_pretrained(str(folder), subfolder="transformer")
    changed = {k: v + 0.01 for k, v in reference.state_dict().items()}  # a "fine-tune"
    save_file(changed, str(tmp_path / "finetune.safetensors"))
    config = _config(host, folder, flux_pretrained_transformer_model_name_or_path=str(tmp_path / "finetune.safetensors"))
    bundle = host.load_model(config, torch.device("cpu"))
    loaded = bundle.denoiser.state_dict()
    assert all(torch.equal(loaded[k], changed[k].to(loaded[k].dtype)) for k in changed)
    assert bundle.components["pipeline"].transformer is bundle.denoiser


def test_bundle_describes_the_model_to_the_core(host, tiny_model_dir):
    bundle = host.load_model(_config(host, tiny_model_dir("flux")), torch.device("cpu"))
    assert bundle.max_frames == 1 and bundle.temporal_compression == 1
    assert bundle.spatial_multiple == 16  # 8x VAE, 2x2 packing
    assert bundle.num_blocks == 4 and bundle.block_lists == ["transformer_blocks", "single_transformer_blocks"]
    assert bundle.encoders == {"text_encoder": "text", "text_encoder_2": "text", "vae": "latent"}
    assert bundle.refused_precisions == {}


def test_hook_encodes_images_and_prompts_as_flux_pipeline_does(host, tiny_model_dir):
    bundle = host.load_model(_config(host, tiny_model_dir("flux")), torch.device("cpu"))
    pipe = bundle.components["pipeline"]
    pixels = torch.rand(2, 1, 3, 64, 48) * 2 - 1
    with torch.no_grad():
        latents = host.encode_batch(bundle, pixels)
        texts = host.encode_prompts(bundle, ["a red circle", "a blue square on a white background"])
        embeds, pooled, _ = pipe.encode_prompt(["a red circle"], None, max_sequence_length=32)
        vae = pipe.vae
        decoded = vae.decode(latents[0]["latents"][None] / vae.config.scaling_factor + vae.config.shift_factor).sample
    assert latents[0]["latents"].shape == (4, 8, 6)
    assert decoded.shape == (1, 3, 64, 48)
    assert texts[0]["prompt_embeds"].shape == (32, 32) and texts[1]["prompt_embeds"].shape == (32, 32)
    torch.testing.assert_close(texts[0]["prompt_embeds"], embeds[0])
    torch.testing.assert_close(texts[0]["pooled_prompt_embeds"], pooled[0])
    with pytest.raises(Exception, match="single images"):
        host.encode_batch(bundle, torch.zeros(1, 2, 3, 64, 64))


def test_missing_model_and_unknown_flavour_are_config_errors(host, tmp_path):
    with pytest.raises(ConfigError, match="cannot load Flux"):
        host.load_model(_config(host, tmp_path / "nowhere"), torch.device("cpu"))
    with pytest.raises(ConfigError, match="unknown Flux flavour 'schnel'.*schnell"):
        host.write_tiny_model("flux", tmp_path / "m", 0, "schnel")


def test_transformer_subfolder_none_reads_the_root(host, tiny_model_dir, tmp_path):
    from diffusers import FluxTransformer2DModel

    FluxTransformer2DModel.from_pretrained(str(tiny_model_dir("flux")), subfolder="transformer").save_pretrained(
        str(tmp_path / "root")
    )
    config = _config(
        host, tiny_model_dir("flux"), flux_pretrained_transformer_model_name_or_path=str(tmp_path / "root"),
        flux_pretrained_transformer_subfolder="none",
    )
    assert host.load_model(config, torch.device("cpu")).num_blocks == 4


@pytest.mark.parametrize("variant", [None, "schnell"], ids=["dev", "schnell"])
def test_guidance_value_reaches_the_guidance_embedding_of_dev_only(host, tiny_model_dir, variant):
    def loss(value: float) -> float:
        config = _config(host, tiny_model_dir("flux", variant), flux_guidance_value=value)
        bundle = host.load_model(config, torch.device("cpu"))
        with torch.no_grad():
            return float(host.compute_loss(bundle, _batch(), torch.Generator().manual_seed(1), config).loss)

    if variant is None:
        assert loss(1.0) != loss(4.0)
    else:
        assert loss(1.0) == loss(4.0)  # schnell has no guidance embedding


def test_ids_and_guidance_made_once_per_shape_serve_inference_and_training_alike(host, tiny_model_dir):
    """The loss reuses its image/text ids and guidance tensor per shape, also when first made under inference
    mode (evaluation): a later training step's graph takes them as they are."""
    from tuner_flux.loss import transformer_inputs

    config = _config(host, tiny_model_dir("flux"))
    bundle = host.load_model(config, torch.device("cpu"))
    batch = _batch()
    noisy, sigmas = torch.randn(1, 16, 16), torch.tensor([0.5])
    with torch.inference_mode():
        inferred = host.compute_loss(bundle, batch, torch.Generator().manual_seed(1), config).loss
    first, again = (transformer_inputs(bundle, batch, noisy, sigmas) for _ in range(2))
    assert all(first[k] is again[k] for k in ("img_ids", "txt_ids", "guidance"))  # built once
    assert first["img_ids"].shape == (16, 3) and first["img_ids"][-1].tolist() == [0, 3, 3]
    bundle.denoiser.requires_grad_(True)  # every weight trains: every op records the graph
    try:
        loss = host.compute_loss(bundle, batch, torch.Generator().manual_seed(1), config).loss
        loss.backward()
    finally:
        bundle.denoiser.requires_grad_(False)
    assert torch.allclose(loss.detach(), inferred)
    assert torch.isfinite(bundle.denoiser.x_embedder.weight.grad).all()

"""Image-to-video Wan (2.1 I2V / FLF2V, 2.2 TI2V): conditioning as WanImageToVideoPipeline makes it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tuner.config import resolve_config
from tuner.plugins import PluginHost
from tuner.types.validation import ValidationRequest


@pytest.fixture(scope="module")
def host():
    return PluginHost.build(["wan"])


def _bundle(host, tiny_model_dir, flavour, model=None, **wan):
    folder = tiny_model_dir("wan", model or flavour)
    section = {"pretrained_model_name_or_path": str(folder), "max_sequence_length": 32, "model_flavour": flavour}
    return host.load_model(resolve_config({"wan": {**section, **wan}}, host), torch.device("cpu"))


def _pixels(batch=1, frames=9, size=32, seed=0):
    """Pixels as the cache builder makes them: uint8 values mapped to [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, frames, 3, size, size), generator=g).float() / 127.5 - 1


def _pil(frame):
    from PIL import Image

    return Image.fromarray(frame.permute(1, 2, 0).add(1).mul(127.5).round().byte().numpy())


@pytest.mark.parametrize("flavour", ["i2v-14b-2.1", "flf2v-14b-2.1"])
def test_cached_conditioning_equals_the_pipelines_prepare_latents_and_encode_image(host, tiny_model_dir, flavour):
    bundle = _bundle(host, tiny_model_dir, flavour)
    pixels = _pixels()
    entry = host.encode_batch(bundle, pixels)[0]
    assert set(entry) == {"latents", "cond_latents", "image_embeds"}
    pipe = bundle.components["i2v_pipeline"]
    last = pixels[:, -1] if flavour.startswith("flf2v") else None
    _, condition = pipe.prepare_latents(
        pixels[:, 0], 1, 16, 32, 32, 9, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0), None, last
    )
    # The pipeline's condition is [4-channel frame mask, conditioning latents].
    from tuner_wan.conditioning import frame_mask

    assert torch.allclose(entry["cond_latents"], condition[0, 4:], atol=1e-5)
    assert torch.equal(frame_mask(1, 9, (3, 4, 4), 4, last is not None), condition[:, :4])
    images = [_pil(pixels[0, 0])] + ([_pil(pixels[0, -1])] if last is not None else [])
    embeds = pipe.encode_image(images if last is not None else images[0], torch.device("cpu"))
    assert torch.allclose(entry["image_embeds"], embeds if last is not None else embeds[0], atol=1e-5)


def test_ti2v_first_latent_frame_is_what_the_pipeline_conditions_on(host, tiny_model_dir):
    bundle = _bundle(host, tiny_model_dir, "ti2v-5b-2.2")
    pixels = _pixels(size=64)
    entry = host.encode_batch(bundle, pixels)[0]
    assert set(entry) == {"latents"}  # Wan's VAE is causal: nothing more to cache
    pipe = bundle.components["i2v_pipeline"]
    _, condition, mask = pipe.prepare_latents(
        pixels[:, 0], 1, 48, 64, 64, 9, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0)
    )
    assert torch.allclose(entry["latents"][:, :1], condition[0], atol=1e-5)
    assert mask[0, 0, 0].eq(0).all() and mask[0, 0, 1:].eq(1).all()


def test_ti2v_conditioned_frame_has_timestep_zero_zero_gradient_and_is_never_routed(host, tiny_model_dir):
    from tuner.train.timesteps import add_noise

    from tuner.train.timesteps import velocity_errors
    from tuner_wan.conditioning import model_inputs

    bundle = _bundle(host, tiny_model_dir, "ti2v-5b-2.2")
    x0 = torch.randn(2, 48, 3, 4, 4)
    noise = torch.randn_like(x0)
    sigmas = torch.tensor([0.3, 0.8])
    noisy = add_noise(x0, noise, sigmas)
    prompt = torch.randn(2, 32, 32)
    inputs = model_inputs(bundle, {"latents": x0, "prompt_embeds": prompt}, noisy, sigmas)
    hidden, timestep = inputs.kwargs["hidden_states"], inputs.kwargs["timestep"]
    assert torch.equal(hidden[:, :, 0], x0[:, :, 0]) and torch.equal(hidden[:, :, 1:], noisy[:, :, 1:])
    # Per token as diffusers' `temp_ts`: (frames, h/2, w/2) tokens, 0 on the first frame.
    assert timestep.shape == (2, 3 * 2 * 2)
    assert timestep[:, :4].eq(0).all() and torch.allclose(timestep[:, 4:], sigmas[:, None] * 1000)
    pred = bundle.denoiser(**inputs.kwargs, return_dict=False)[0].detach().requires_grad_(True)
    velocity_errors(pred, x0, noise, inputs.loss_mask).mean().backward()
    assert pred.grad[:, :, 0].abs().max() == 0 and pred.grad[:, :, 1:].abs().max() > 0
    assert inputs.force_keep is not None and inputs.force_keep[:, :4].all() and not inputs.force_keep[:, 4:].any()


def test_ti2v_text_only_samples_are_noised_everywhere_and_fully_in_the_loss(host, tiny_model_dir):
    from tuner_wan.conditioning import model_inputs

    bundle = _bundle(host, tiny_model_dir, "ti2v-5b-2.2", wan_ti2v_text_only_probability=0.5)
    x0, noisy = torch.randn(2, 48, 3, 4, 4), torch.randn(2, 48, 3, 4, 4)
    batch = {"latents": x0, "prompt_embeds": torch.randn(2, 32, 32)}
    inputs = model_inputs(bundle, batch, noisy, torch.tensor([0.5, 0.5]), text_only=torch.tensor([True, False]))
    assert torch.equal(inputs.kwargs["hidden_states"][0], noisy[0])
    assert inputs.loss_mask[0].eq(1).all() and inputs.loss_mask[1, :, 0].eq(0).all()
    assert inputs.kwargs["timestep"][0].eq(500).all() and inputs.kwargs["timestep"][1, :4].eq(0).all()
    assert not inputs.force_keep[0].any() and inputs.force_keep[1, :4].all()


def test_cache_id_changes_with_the_conditioning(host, tiny_model_dir):
    i2v = _bundle(host, tiny_model_dir, "i2v-14b-2.1")
    flf2v = _bundle(host, tiny_model_dir, "flf2v-14b-2.1", model="i2v-14b-2.1")
    assert i2v.cache_id != flf2v.cache_id


def _render(bundle, frames, seed=1):
    from tuner_wan.validation import render_validation

    request = ValidationRequest(
        step=0, key="main", prompt="a red square", negative_prompt="", num_frames=9, width=64, height=64,
        num_inference_steps=3, guidance_scale=1.0, seed=seed, output_dir=None, conditioning_frames=frames,
    )  # fmt: skip
    with torch.no_grad():
        return render_validation(bundle, request).frames["main"]


def test_ti2v_validation_video_starts_with_the_conditioning_image(host, tiny_model_dir):
    from tuner.data.synthetic import render_clip

    bundle = _bundle(host, tiny_model_dir, "ti2v-5b-2.2")
    image = render_clip("circle", "yellow", "grey", "left", 1, 64, 64)
    video = _render(bundle, image)
    # Within VAE error: the image through the tiny VAE and back (its decoder is causal, so the first
    # frame depends on the first latent frame alone).
    vae = bundle.components["vae"]
    pixels = torch.from_numpy(image).permute(0, 3, 1, 2).float()[:, :, None] / 127.5 - 1
    with torch.no_grad():
        back = vae.decode(vae.encode(pixels).latent_dist.mode()).sample[0, :, 0]
    expected = back.permute(1, 2, 0).add(1).div(2).clamp(0, 1).numpy()
    assert video.shape == (9, 64, 64, 3)
    assert np.abs(video[0] - expected).max() < 1e-3


def test_i2v_validation_depends_on_the_first_frame(host, tiny_model_dir):
    from tuner.data.synthetic import render_clip

    bundle = _bundle(host, tiny_model_dir, "i2v-14b-2.1")
    red = render_clip("square", "red", "black", "right", 1, 64, 64)
    blue = render_clip("square", "blue", "white", "right", 1, 64, 64)
    assert np.array_equal(_render(bundle, red), _render(bundle, red))
    assert np.abs(_render(bundle, red) - _render(bundle, blue)).max() > 1e-3


def test_ti2v_single_frame_sample_trains_unconditioned_rather_than_with_an_empty_loss(host, tiny_model_dir):
    from tuner_wan.conditioning import model_inputs

    bundle = _bundle(host, tiny_model_dir, "ti2v-5b-2.2")
    x0, noisy = torch.randn(1, 48, 1, 4, 4), torch.randn(1, 48, 1, 4, 4)
    inputs = model_inputs(bundle, {"latents": x0, "prompt_embeds": torch.randn(1, 32, 32)}, noisy, torch.tensor([0.5]))
    assert torch.equal(inputs.kwargs["hidden_states"], noisy) and inputs.loss_mask.eq(1).all()
    assert inputs.force_keep is None


def test_wan_2_2_a14b_i2v_is_conditioned_like_2_1_without_clip(host, tiny_model_dir, monkeypatch):
    """The seam with the two-expert loading: a 2.2 A14B I2V transformer (36 channels, no image encoder)."""
    import dataclasses

    import tuner_wan.loading as loading
    from tuner.train.timesteps import add_noise

    from tuner_wan.conditioning import model_inputs

    # The session's shared tiny A14B first, from the real flavour: the tiny model is written from FLAVOURS, so
    # written under the patch below it would lack transformer_2 for every later test that asks for this flavour.
    folder = tiny_model_dir("wan", "i2v-14b-2.2-high")
    # Load `transformer` (the high-noise expert) alone, as a one-transformer model.
    one = dataclasses.replace(loading.FLAVOURS["i2v-14b-2.2-high"], expert=None)
    monkeypatch.setitem(loading.FLAVOURS, "i2v-14b-2.2-high", one)
    bundle = _bundle(host, tiny_model_dir, "i2v-14b-2.2-high")
    assert (folder / "transformer_2").is_dir()  # the shared model is still the two-expert one
    assert bundle.image_conditioned and "image_encoder" not in bundle.components
    pixels = _pixels()
    entry = host.encode_batch(bundle, pixels)[0]
    assert set(entry) == {"latents", "cond_latents"}
    _, condition = bundle.components["i2v_pipeline"].prepare_latents(
        pixels[:, 0], 1, 16, 32, 32, 9, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0)
    )
    assert torch.allclose(entry["cond_latents"], condition[0, 4:], atol=1e-5)
    batch = {k: v[None] for k, v in entry.items()} | {"prompt_embeds": torch.randn(1, 32, 32)}
    sigmas = torch.tensor([0.95])
    inputs = model_inputs(bundle, batch, add_noise(batch["latents"], torch.randn(1, 16, 3, 4, 4), sigmas), sigmas)
    assert "encoder_hidden_states_image" not in inputs.kwargs and inputs.kwargs["hidden_states"].shape[1] == 36
    assert bundle.denoiser(**inputs.kwargs, return_dict=False)[0].shape == (1, 16, 3, 4, 4)


def _saved_bytes(bundle, inputs) -> int:
    """Bytes of the activations autograd keeps for backward in one training forward (the memory that grows)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    lora = torch.nn.Parameter(torch.zeros(()))  # something to differentiate, as an adapter would be
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        kwargs = dict(inputs.kwargs, hidden_states=inputs.kwargs["hidden_states"] + lora)
        bundle.denoiser(**kwargs, return_dict=False)[0].sum().backward()
    return total


def test_force_2_1_time_embedding_embeds_per_sample_and_saves_memory(host, tiny_model_dir):
    from tuner.train.timesteps import add_noise

    from tuner_wan.conditioning import model_inputs

    x0 = torch.randn(2, 48, 5, 8, 8)
    noise = torch.randn_like(x0)
    sigmas = torch.tensor([0.3, 0.8])
    batch = {"latents": x0, "prompt_embeds": torch.randn(2, 32, 32)}
    noisy = add_noise(x0, noise, sigmas)
    per_token = _bundle(host, tiny_model_dir, "ti2v-5b-2.2")
    per_sample = _bundle(host, tiny_model_dir, "ti2v-5b-2.2", wan_force_2_1_time_embedding=True)
    token_inputs = model_inputs(per_token, batch, noisy, sigmas)
    sample_inputs = model_inputs(per_sample, batch, noisy, sigmas)
    assert token_inputs.kwargs["timestep"].shape == (2, 5 * 4 * 4)
    assert torch.equal(sample_inputs.kwargs["timestep"], sigmas * 1000)
    # The clean first frame is still given and still out of the loss.
    assert torch.equal(sample_inputs.kwargs["hidden_states"], token_inputs.kwargs["hidden_states"])
    assert torch.equal(sample_inputs.loss_mask, token_inputs.loss_mask)
    saved_token, saved_sample = _saved_bytes(per_token, token_inputs), _saved_bytes(per_sample, sample_inputs)
    assert saved_sample < 0.9 * saved_token, (saved_sample, saved_token)


def test_force_2_1_time_embedding_on_a_per_sample_flavour_is_a_notice(host, tiny_model_dir, capsys):
    bundle = _bundle(host, tiny_model_dir, "i2v-14b-2.1", wan_force_2_1_time_embedding=True)
    assert bundle.components["conditioning"].per_sample_timestep is False
    assert "wan_force_2_1_time_embedding has no effect on i2v-14b-2.1" in capsys.readouterr().err.replace("\n", " ")

"""Wan's `describe_family`: its flavours and frame rule, and the estimate held to measurements on CPU."""

from __future__ import annotations

import pytest
import torch

from tuner.plugins import PluginHost
from tuner.setup.estimate import Workload, forward_saved_bytes, training_flops
from tuner.setup.measure import saved_activation_bytes, step_flops

TEXT = 32
MID = dict(num_attention_heads=4, attention_head_dim=64, ffn_dim=1024, num_layers=3)  # bench/overhead.py's mid model


@pytest.fixture(scope="module")
def profile():
    return PluginHost.build(["wan"]).describe_family("wan")


def _model(shape: dict, rank: int, checkpointing: bool, dtype: torch.dtype):
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig, inject_adapter_in_model

    from tuner_wan.plugin import LORA_TARGETS

    torch.manual_seed(0)
    model = WanTransformer3DModel(**shape).requires_grad_(False).to(dtype)
    # As from_pretrained(torch_dtype=...) loads it for a run: diffusers keeps these modules float32.
    for name, module in model.named_modules():
        if any(part in model._keep_in_fp32_modules for part in name.split(".")):
            module.float()
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS), model)
    for p in model.parameters():
        if p.requires_grad:  # the run's rule: the adapter is float32 whatever the base
            p.data = p.data.float()
    if checkpointing:
        model.enable_gradient_checkpointing()
    return model.train()


def _inputs(shape: dict, latent_frames: int, side: int, dtype: torch.dtype):
    latents = torch.randn(1, shape["in_channels"], latent_frames, side, side, dtype=dtype)
    return latents, torch.tensor([500]), torch.randn(1, TEXT, shape["text_dim"], dtype=dtype)


def test_hook_describe_family_lists_every_flavour_with_its_frame_rule(profile):
    from tuner_wan.flavours import DEFAULT_FLAVOUR, FLAVOURS

    assert [f.name for f in profile.flavours][0] == DEFAULT_FLAVOUR
    assert {f.name for f in profile.flavours} == set(FLAVOURS)
    assert profile.valid_frames(81) and not profile.valid_frames(80) and profile.nearest_frames(80) == 77
    for flavour in profile.flavours:
        assert flavour.settings == {"wan.model_flavour": flavour.name}
        assert profile.valid_frames(flavour.frames)


def test_shapes_of_the_real_flavours_count_their_published_sizes(profile):
    sizes = {f.name: profile.shape(f.transformer_config).parameters for f in profile.flavours}
    assert sizes["t2v-480p-1.3b-2.1"] == pytest.approx(1.42e9, rel=0.01)
    assert sizes["t2v-480p-14b-2.1"] == pytest.approx(14.3e9, rel=0.02)
    assert sizes["ti2v-5b-2.2"] == pytest.approx(5.0e9, rel=0.03)


@pytest.mark.parametrize(
    ("name", "overrides", "latent_frames", "side", "tolerance"),
    [
        ("tiny", {}, 5, 8, 0.25),  # 80 tokens: fixed per-token extras (rotary tables, norms' statistics) weigh more
        # 256-512 wide: terms that do not grow with the width (rotary tables, per-head statistics) still weigh
        # ~5%; the counts are fitted at the real widths (test_wan_true_width_estimate.py holds them within 2-5%).
        ("mid", MID, 5, 32, 0.08),
        ("mid-wide", {**MID, "attention_head_dim": 128, "ffn_dim": 2048}, 3, 32, 0.08),
    ],
)
@pytest.mark.parametrize("checkpointing", [False, True])
def test_estimated_activations_and_flops_match_what_torch_measures(
    profile, name, overrides, latent_frames, side, tolerance, checkpointing
):
    """The estimate's activation bytes within the stated tolerance of the saved-tensor hooks' bytes (bf16 autocast),
    and its FLOPs within 5% of torch's FlopCounterMode, for the tiny model and two mid-size shapes."""
    from tuner_wan.tiny import TINY_TRANSFORMER

    shape, rank = {**TINY_TRANSFORMER, **overrides}, 8
    model_shape = profile.shape(shape)
    work = Workload(tokens=latent_frames * (side // 2) ** 2, text_tokens=TEXT, rank=rank)

    model = _model(shape, rank, checkpointing, torch.bfloat16)
    latents, t, text = _inputs(shape, latent_frames, side, torch.bfloat16)

    def forward() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(latents, t, text, return_dict=False)[0]

    measured = saved_activation_bytes(forward, model.parameters())
    assert forward_saved_bytes(model_shape, work, checkpointing) == pytest.approx(measured, rel=tolerance)

    model32 = _model(shape, rank, checkpointing, torch.float32)
    latents, t, text = _inputs(shape, latent_frames, side, torch.float32)
    flops = step_flops(lambda: model32(latents, t, text, return_dict=False)[0])
    assert training_flops(model_shape, work, checkpointing) == pytest.approx(flops, rel=0.05)

"""Flux's `describe_family`: dev and schnell, and the estimate held to measurements on CPU."""

from __future__ import annotations

import pytest
import torch

from tuner.plugins import PluginHost
from tuner.setup.estimate import Workload, forward_saved_bytes, training_flops
from tuner.setup.measure import saved_activation_bytes, step_flops

TEXT = 32
MID = dict(num_attention_heads=4, attention_head_dim=64, axes_dims_rope=(16, 24, 24), num_layers=2, num_single_layers=4)


@pytest.fixture(scope="module")
def profile():
    return PluginHost.build(["flux"]).describe_family("flux")


def _run(shape: dict, rank: int, checkpointing: bool, dtype: torch.dtype, side: int):
    from diffusers import FluxTransformer2DModel
    from peft import LoraConfig, inject_adapter_in_model

    from tuner_flux.plugin import LORA_TARGETS

    torch.manual_seed(0)
    model = FluxTransformer2DModel(**shape).requires_grad_(False).to(dtype)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS), model)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    n = (side // 2) ** 2
    kwargs = dict(
        hidden_states=torch.randn(1, n, shape["in_channels"], dtype=dtype),
        encoder_hidden_states=torch.randn(1, TEXT, shape["joint_attention_dim"], dtype=dtype),
        pooled_projections=torch.randn(1, shape["pooled_projection_dim"], dtype=dtype),
        timestep=torch.tensor([0.5]),
        img_ids=torch.zeros(n, 3),
        txt_ids=torch.zeros(TEXT, 3),
        return_dict=False,
    )
    return model, lambda: model(**kwargs)[0]


def test_hook_describe_family_offers_dev_and_schnell_as_images(profile):
    assert [f.name for f in profile.flavours] == ["dev", "schnell"]
    assert profile.frame_step == 0 and profile.valid_frames(1) and not profile.valid_frames(5)
    assert all(f.settings["data.num_frames"] == 1 for f in profile.flavours)
    assert profile.shape(profile.flavours[0].transformer_config).parameters == pytest.approx(11.9e9, rel=0.01)


@pytest.mark.parametrize(("overrides", "tolerance"), [({}, 0.25), (MID, 0.08)])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_estimated_activations_and_flops_match_what_torch_measures(profile, overrides, tolerance, checkpointing):
    from tuner_flux.tiny import TINY_TRANSFORMER

    shape, rank, side = {**TINY_TRANSFORMER, **overrides}, 8, 32
    model_shape = profile.shape(shape)
    work = Workload(tokens=(side // 2) ** 2 + TEXT, text_tokens=0, rank=rank)
    model, forward = _run(shape, rank, checkpointing, torch.bfloat16, side)

    def autocast_forward() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return forward()

    measured = saved_activation_bytes(autocast_forward, model.parameters())
    assert forward_saved_bytes(model_shape, work, checkpointing) == pytest.approx(measured, rel=tolerance)
    _, forward32 = _run(shape, rank, checkpointing, torch.float32, side)
    assert training_flops(model_shape, work, checkpointing) == pytest.approx(step_flops(forward32), rel=0.08)

"""TREAD on Flux: the routed forward over double + single blocks, and training with routes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tuner.config import resolve_config
from tuner.plugins import PluginHost
from tuner.routing import check_routing
from tuner.types.bundle import ModelBundle
from tuner.types.routes import TokenRoute

ROUTE = {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 1, "end_layer_idx": -2}]}  # 1..2: double -> single


@pytest.fixture(scope="module")
def host():
    return PluginHost.build(["flux", "tread"])


def tiny_flux(seed: int = 0, **shape):
    from diffusers import FluxTransformer2DModel

    from tuner_flux.tiny import TINY_TRANSFORMER

    torch.manual_seed(seed)
    return FluxTransformer2DModel(**{**TINY_TRANSFORMER, "guidance_embeds": True, **shape}).eval()


def inputs(batch: int = 2, height: int = 6, width: int = 10):
    """Packed latents of (height/2 * width/2) = 15 image tokens, 7 text tokens."""
    from diffusers import FluxPipeline

    g = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(batch, (height // 2) * (width // 2), 16, generator=g),
        "encoder_hidden_states": torch.randn(batch, 7, 32, generator=g),
        "pooled_projections": torch.randn(batch, 32, generator=g),
        "timestep": torch.tensor([0.3, 0.8][:batch]),
        "img_ids": FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, "cpu", torch.float32),
        "txt_ids": torch.zeros(7, 3),
        "guidance": torch.ones(batch),
    }


def router(host, tread_config):
    config = resolve_config({"tread_config": tread_config}, host)
    return host.route_tokens(ModelBundle("flux", nn.Identity(), []), config)


class KeepAll:
    def plan(self, num_blocks, num_tokens, batch_size, generator, force_keep=None):
        return [TokenRoute(0, num_blocks - 1, torch.arange(num_tokens).repeat(batch_size, 1))]


class Everything:
    """Routes half the tokens past every block."""

    def __init__(self):
        self.keep = None

    def plan(self, num_blocks, num_tokens, batch_size, generator, force_keep=None):
        self.keep = torch.arange(0, num_tokens, 2).repeat(batch_size, 1)
        return [TokenRoute(0, num_blocks - 1, self.keep)]


def test_keeping_everything_and_a_zero_ratio_equal_the_diffusers_forward(host):
    from tuner_flux.routing import routed_forward

    model, x = tiny_flux(), inputs()
    zero = router(host, {"routes": [{"selection_ratio": 0.0, "start_layer_idx": 0, "end_layer_idx": -1}]})
    with torch.no_grad():
        full = model(**x, return_dict=False)[0]
        assert torch.allclose(routed_forward(model, **x, router=KeepAll(), generator=None), full, atol=1e-6)
        assert torch.allclose(routed_forward(model, **x, router=zero, generator=torch.Generator()), full, atol=1e-6)


def test_skipped_image_tokens_pass_every_block_unchanged_and_kept_ones_see_the_text(host):
    from tuner_flux.routing import routed_forward

    model, x = tiny_flux(), inputs()
    plan = Everything()
    with torch.no_grad():
        routed = routed_forward(model, **x, router=plan, generator=None)
        # What a token that skips every block becomes: the embedder straight into the output head.
        temb = model.time_text_embed(x["timestep"] * 1000, x["guidance"] * 1000, x["pooled_projections"])
        bypass = model.proj_out(model.norm_out(model.x_embedder(x["hidden_states"]), temb))
        other_text = routed_forward(
            model, **{**x, "encoder_hidden_states": x["encoder_hidden_states"] + 1.0}, router=plan, generator=None
        )
    skipped = torch.ones(routed.shape[1], dtype=torch.bool)
    skipped[plan.keep[0]] = False
    assert torch.allclose(routed[:, skipped], bypass[:, skipped], atol=1e-6)
    assert not torch.allclose(routed[:, ~skipped], bypass[:, ~skipped], atol=1e-3)
    # The text stream runs whole through every block: kept image tokens attend to it.
    assert not torch.allclose(other_text[:, ~skipped], routed[:, ~skipped], atol=1e-4)


def test_routes_plan_over_double_then_single_blocks(host, tiny_model_dir):
    config = resolve_config({"tread_config": ROUTE}, host)
    bundle = ModelBundle("flux", tiny_flux(), [], supports_token_routing=True,
                         block_lists=["transformer_blocks", "single_transformer_blocks"])
    assert bundle.num_blocks == 4
    assert check_routing(bundle, host.route_tokens(bundle, config)) == [(1, 2)]


def test_gradients_reach_lora_weights_of_both_block_kinds_inside_a_route(host):
    from peft import LoraConfig, inject_adapter_in_model

    from tuner_flux.plugin import LORA_TARGETS
    from tuner_flux.routing import routed_forward

    model = tiny_flux().train()
    model.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=4, target_modules=LORA_TARGETS, init_lora_weights=False), model)
    out = routed_forward(model, **inputs(), router=router(host, ROUTE), generator=torch.Generator().manual_seed(0))
    out.pow(2).mean().backward()
    for name in ("transformer_blocks.1.attn.to_q", "single_transformer_blocks.0.proj_mlp"):
        grad = model.get_submodule(name).lora_A["default"].weight.grad
        assert grad is not None and grad.abs().sum() > 0, name


def _toml(value):
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def test_training_flux_with_tread_routes_learns(make_run, cli, monkeypatch):
    import tuner_flux.routing
    from tuner.report.jsonlog import read_log

    plain = tuner_flux.routing.routed_forward
    routed: list[int] = []

    def counting(*args, **kwargs):
        routed.append(1)
        return plain(*args, **kwargs)

    monkeypatch.setattr(tuner_flux.routing, "routed_forward", counting)

    config = make_run(
        plugin="flux",
        steps=40,
        overrides=["plugins=['flux', 'tread']", f"tread_config={_toml(ROUTE)}", "validation.validation_prompt=''"],
    )
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    losses = [r["loss"] for r in read_log(config.parent / "output") if r["event"] == "step"]
    assert len(losses) == 40
    assert len(routed) == 40, "every training forward routes"
    assert np.mean(losses[-10:]) < 0.9 * np.mean(losses[:10])

"""TREAD: config and validation, the router's policy, Wan's routed forward, and training with the guide's routes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tuner import hookimpl
from tuner.config import resolve_config
from tuner.errors import ConfigError, PluginError
from tuner.plugins import PluginHost
from tuner.routing import check_routing, gather_tokens, scatter_tokens
from tuner.types.bundle import ModelBundle
from tuner.types.routes import TokenRoute
from tuner_tread.examples import GUIDE_FIVE_ROUTES, GUIDE_ONE_ROUTE


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run on one thread: their ops are too small to split, and on a busy machine a second
    thread only makes every op wait for a time slice (a 30-block model then runs 100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # never more than OMP_NUM_THREADS allows
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def host():
    return PluginHost.build(["wan", "tread"])


def router_for(host, tread_config):
    config = resolve_config({"tread_config": tread_config}, host)
    return host.route_tokens(ModelBundle("wan", nn.Identity(), []), config)


def block_stack(blocks: int) -> nn.Module:
    """A denoiser that is only a stack of ``blocks`` blocks at ``blocks``: what `ModelBundle.num_blocks` counts."""
    model = nn.Module()
    model.blocks = nn.ModuleList(nn.Identity() for _ in range(blocks))
    return model


def tiny_wan(num_layers: int, seed: int = 0):
    from diffusers import WanTransformer3DModel

    from tuner_wan.tiny import TINY_TRANSFORMER

    torch.manual_seed(seed)
    return WanTransformer3DModel(**{**TINY_TRANSFORMER, "num_layers": num_layers}).eval()


def inputs(batch: int = 3, frames: int = 3, height: int = 6, width: int = 10, per_token: bool = False):
    """Latents of (frames * height/2 * width/2) tokens: 45 by default, an odd count."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 16, frames, height, width, generator=g)
    tokens = frames * (height // 2) * (width // 2)
    t = torch.rand(batch, tokens, generator=g) * 1000 if per_token else torch.tensor([100.0, 500.0, 900.0][:batch])
    return x, t, torch.randn(batch, 7, 32, generator=g)


def as_tokens(sample: torch.Tensor) -> torch.Tensor:
    """Wan's output (B, C, F, H, W) -> (B, tokens, values), tokens in the model's order (patch 1x2x2)."""
    b, c, f, h, w = sample.shape
    return sample.reshape(b, c, f, h // 2, 2, w // 2, 2).permute(0, 2, 3, 5, 1, 4, 6).reshape(b, f * (h // 2) * (w // 2), -1)


# -- config ----------------------------------------------------------------


def test_at_start_the_blocks_each_route_skips_and_the_share_routed_are_said(host, capsys):
    from tuner_tread.plugin import describe_routes

    five = resolve_config({"tread_config": GUIDE_FIVE_ROUTES}, host).section("tread").tread_config.routes
    # Spans 2-8, 9-11, 12-15, 16-23, 24-28 of 30 blocks: (0.1*7 + 0.25*3 + 0.35*4 + 0.25*8 + 0.1*5) / 30 = 17.8%.
    assert describe_routes(five, 30) == (
        "TREAD: 10% of latent tokens skip blocks 2-8 (7 of 30); 25% of latent tokens skip blocks 9-11 (3 of 30);"
        " 35% of latent tokens skip blocks 12-15 (4 of 30); 25% of latent tokens skip blocks 16-23 (8 of 30);"
        " 10% of latent tokens skip blocks 24-28 (5 of 30); expected share routed: 17.8% of the latent tokens'"
        " block passes"
    )
    assert describe_routes(five, 6) is None, "routes that do not fit: the core's start-up check says why"
    config = resolve_config({"tread_config": GUIDE_ONE_ROUTE}, host)
    host.route_tokens(ModelBundle("wan", block_stack(6), [], block_lists=["blocks"]), config)
    assert "10% of latent tokens skip blocks 2-4 (3 of 6); expected share routed: 5.0%" in capsys.readouterr().err


def test_routes_may_come_from_a_json_file_named_by_the_path_rule(host, tmp_path):
    import json

    (tmp_path / "routes.json").write_text(json.dumps({"tread_config": GUIDE_FIVE_ROUTES}))  # the guide's snippet
    (tmp_path / "bare.json").write_text(json.dumps(GUIDE_ONE_ROUTE))
    for name, want in (("routes.json", GUIDE_FIVE_ROUTES), ("bare.json", GUIDE_ONE_ROUTE)):
        got = resolve_config({"tread_config": name}, host, base_dir=tmp_path).section("tread").tread_config
        assert got.model_dump() == want
    (tmp_path / "bad.json").write_text(json.dumps({"routes": [{"selection_ratio": 1.5, "start_layer_idx": 0,
                                                               "end_layer_idx": 1}]}))
    with pytest.raises(ConfigError, match=r"tread.tread_config: .*bad.json: routes.0.selection_ratio: Input should be less than 1"):
        resolve_config({"tread_config": "bad.json"}, host, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=f"no such file {tmp_path / 'none.json'}"):
        resolve_config({"tread_config": "none.json"}, host, base_dir=tmp_path)


def test_guide_examples_written_at_the_top_level_resolve_to_their_spans(host):
    one, five = router_for(host, GUIDE_ONE_ROUTE), router_for(host, GUIDE_FIVE_ROUTES)
    assert one.spans(30) == [(2, 28)]
    assert five.spans(30) == [(2, 8), (9, 11), (12, 15), (16, 23), (24, 28)]
    assert one.spans(4) == [(2, 2)]


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ([{"selection_ratio": 1.0, "start_layer_idx": 2, "end_layer_idx": 4}], "selection_ratio: Input should be less than 1"),
        ([{"selection_ratio": -0.1, "start_layer_idx": 2, "end_layer_idx": 4}], "greater than or equal to 0"),
        ([{"selection_ratio": 0.1, "start_layer_idx": 5, "end_layer_idx": 4}], "start_layer_idx 5 comes after end_layer_idx 4"),
        ([{"selection_ratio": 0.1, "start_layer_idx": 2, "end_layer_idx": 6},
          {"selection_ratio": 0.1, "start_layer_idx": 6, "end_layer_idx": 8}], "must be in block order and must not overlap"),
        ([{"selection_ratio": 0.1, "start_layer_idx": 9, "end_layer_idx": 11},
          {"selection_ratio": 0.1, "start_layer_idx": 2, "end_layer_idx": 8}], "routes\\[1\\] starts at block 2"),
        ([{"selection_ratio": 0.1, "start_layer": 2, "end_layer_idx": 8}], "unknown key|start_layer"),
    ],
)
def test_routes_are_validated_when_the_config_is_read(host, routes, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config({"tread_config": {"routes": routes}}, host)


@pytest.mark.parametrize(
    ("tread_config", "blocks", "message"),
    [
        (GUIDE_FIVE_ROUTES, 8, r"routes\[0\].end_layer_idx = 8 is outside this model's 8 blocks \(use 0..7"),
        ({"routes": [{"selection_ratio": 0.1, "start_layer_idx": -2, "end_layer_idx": 3}]}, 8,
         r"start_layer_idx -2 \(block 6\) comes after end_layer_idx 3"),
        ({"routes": [{"selection_ratio": 0.1, "start_layer_idx": 2, "end_layer_idx": -2},
                     {"selection_ratio": 0.1, "start_layer_idx": 24, "end_layer_idx": -1}]}, 30,
         r"routes\[1\] \(blocks 24..29\) does not start after routes\[0\] \(blocks 2..28\)"),
        ({"routes": [{"selection_ratio": 0.1, "start_layer_idx": -9, "end_layer_idx": -2}]}, 8, "-9 is outside"),
    ],
)
def test_routes_that_do_not_fit_the_model_fail_at_start_up(host, tread_config, blocks, message):
    router = router_for(host, tread_config)
    bundle = ModelBundle("wan", block_stack(blocks), [], supports_token_routing=True, block_lists=["blocks"])
    with pytest.raises(ConfigError, match=message):
        check_routing(bundle, router)


def test_hook_route_tokens_offers_a_router_only_when_routes_are_set(host):
    assert router_for(host, None) is None
    assert router_for(host, {"routes": []}) is None
    assert router_for(host, GUIDE_ONE_ROUTE) is not None


def test_a_family_without_routing_support_is_refused_naming_it(host):
    router = router_for(host, GUIDE_ONE_ROUTE)
    with pytest.raises(PluginError, match="model family 'toy' does not support it"):
        check_routing(ModelBundle("toy", nn.Identity(), []), router)


def test_a_feature_capturing_hidden_states_inside_a_route_is_refused(host):
    router = router_for(host, GUIDE_ONE_ROUTE)
    bundle = ModelBundle("wan", block_stack(30), [], supports_token_routing=True, block_lists=["blocks"])
    bundle.run.block_taps = {"crepa": 8}
    with pytest.raises(PluginError, match=r"crepa reads the hidden states of block 8.*blocks 2..28"):
        check_routing(bundle, router)
    for outside in (1, -1, 29):
        bundle.run.block_taps = {"crepa": outside}
        assert check_routing(bundle, router) == [(2, 28)]


# -- the router's policy -----------------------------------------------------


def test_same_seed_routes_the_same_tokens(host):
    router = router_for(host, GUIDE_FIVE_ROUTES)

    def plan(seed):
        return router.plan(30, 101, 4, torch.Generator().manual_seed(seed))

    a, b, c = plan(7), plan(7), plan(8)
    assert [(r.start, r.end) for r in a] == [(2, 8), (9, 11), (12, 15), (16, 23), (24, 28)]
    assert all(torch.equal(x.keep, y.keep) for x, y in zip(a, b))
    assert not all(torch.equal(x.keep, y.keep) for x, y in zip(a, c))
    # selection_ratio is the share that skips: floor(0.35 * 101) = 35 skip, 66 run through
    assert a[2].keep.shape == (4, 66) and a[0].keep.shape == (4, 91)
    assert not torch.equal(a[0].keep[0], a[0].keep[1]), "each sample draws its own tokens"
    assert all(bool((r.keep.diff(dim=1) > 0).all()) for r in a), "ascending, no repeats"


def test_force_keep_tokens_are_never_routed():
    from tuner_tread.router import draw_keep_index

    g = torch.Generator().manual_seed(0)
    force = torch.zeros(2, 50, dtype=torch.bool)
    force[0, :10] = True
    force[1, 40:] = True
    for _ in range(20):
        keep = draw_keep_index(50, 2, 0.5, g, force)
        assert keep.shape == (2, 25)
        assert set(range(10)) <= set(keep[0].tolist()) and set(range(40, 50)) <= set(keep[1].tolist())
    force[1, 10:] = True  # sample 1 leaves only 10 tokens free: every sample skips at most 10
    assert draw_keep_index(50, 2, 0.5, g, force).shape == (2, 40)
    assert draw_keep_index(50, 2, 0.5, g, torch.ones(2, 50, dtype=torch.bool)) is None


def test_wan_force_keep_covers_the_loss_mask_and_conditioned_frames():
    from tuner_wan.routing import force_keep_tokens

    shape = (2, 16, 3, 4, 6)  # 3 x 2 x 3 = 18 tokens
    assert force_keep_tokens(shape, (1, 2, 2)) is None
    mask = torch.zeros(2, 1, 3, 4, 6)
    mask[0, 0, 1, 3, 5] = 1  # frame 1, token row 1, column 2
    keep = force_keep_tokens(shape, (1, 2, 2), loss_mask=mask)
    assert keep[0].nonzero().flatten().tolist() == [1 * 6 + 1 * 3 + 2] and not keep[1].any()
    keep = force_keep_tokens(shape, (1, 2, 2), conditioned_frames=1)
    assert keep[:, :6].all() and not keep[:, 6:].any()


# -- Wan's mechanism ---------------------------------------------------------


class KeepAll:
    """Routes every token through 1..4: gathers and scatters everything, skips nothing."""

    def plan(self, num_blocks, num_tokens, batch_size, generator, force_keep=None):
        return [TokenRoute(1, 4, torch.arange(num_tokens).repeat(batch_size, 1))]


@pytest.mark.parametrize("per_token", [False, True], ids=["timestep", "per-token-timestep"])
def test_selection_ratio_zero_and_keeping_everything_equal_no_routing(host, per_token):
    from tuner_wan.routing import routed_forward

    model = tiny_wan(6)
    x, t, text = inputs(per_token=per_token)
    with torch.no_grad():
        full = model(x, t, text, return_dict=False)[0]
        zero = routed_forward(model, x, t, text, router_for(host, {"routes": [
            {"selection_ratio": 0.0, "start_layer_idx": 1, "end_layer_idx": -2}]}), torch.Generator().manual_seed(0))
        everything = routed_forward(model, x, t, text, KeepAll(), None)
    assert torch.equal(zero, full)
    assert torch.equal(everything, full)


class PerTokenBlock(nn.Module):
    """A block that acts on each token alone, reading that token's RoPE row and modulation."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb):
        cos, sin = rotary_emb  # (B | 1, tokens, 1, head_dim)
        position = (cos[..., 0, :].float().sum(-1, keepdim=True) + 2 * sin[..., 0, :].float().sum(-1, keepdim=True))
        modulation = temb[:, :, 0] if temb.ndim == 4 else temb[:, None, 0]
        return hidden_states + torch.tanh(self.lin(hidden_states)) + 0.1 * position + 0.01 * modulation


class Bypass(nn.Module):
    def forward(self, hidden_states, *rest):
        return hidden_states


@pytest.mark.parametrize("per_token", [False, True], ids=["timestep", "per-token-timestep"])
def test_a_per_token_span_gives_kept_tokens_their_full_forward_and_passes_skipped_ones_through(host, per_token):
    from tuner_wan.routing import routed_forward

    model = tiny_wan(6)
    torch.manual_seed(3)
    for i in range(2, 6):
        model.blocks[i] = PerTokenBlock()
    x, t, text = inputs(per_token=per_token)
    router = router_for(host, {"routes": [{"selection_ratio": 0.4, "start_layer_idx": 2, "end_layer_idx": -1}]})
    keep = router.plan(6, 45, 3, torch.Generator().manual_seed(5))[0].keep
    with torch.no_grad():
        routed = as_tokens(routed_forward(model, x, t, text, router, torch.Generator().manual_seed(5)))
        full = as_tokens(model(x, t, text, return_dict=False)[0])
        for i in range(2, 6):
            model.blocks[i] = Bypass()
        bypass = as_tokens(model(x, t, text, return_dict=False)[0])
    skipped = torch.ones(3, 45, dtype=torch.bool).scatter(1, keep, False)
    assert keep.shape == (3, 27) and int(skipped.sum()) == 3 * 18
    assert not torch.allclose(full, bypass)
    assert torch.allclose(routed[~skipped], full[~skipped], atol=1e-5)
    assert torch.allclose(routed[skipped], bypass[skipped], atol=1e-5)


def test_gather_and_scatter_round_trip_odd_token_counts_and_batches():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 45, 2, 5, generator=g)
    keep = torch.rand(3, 45, generator=g).topk(23, dim=1).indices.sort(dim=1).values
    routed = gather_tokens(x, keep)
    assert routed.shape == (3, 23, 2, 5)
    assert torch.equal(routed[1, 4], x[1, keep[1, 4]])
    assert torch.equal(scatter_tokens(x, routed, keep), x)
    shared = torch.randn(1, 45, 1, 8, generator=g)  # a RoPE table shared by the batch
    assert torch.equal(gather_tokens(shared, keep)[2], shared[0, keep[2]])


@pytest.mark.parametrize(("batch", "frames", "height", "width"), [(1, 1, 2, 2), (2, 3, 6, 10), (3, 5, 2, 6)])
def test_routed_forward_keeps_the_shape(host, batch, frames, height, width):
    from tuner_wan.routing import routed_forward

    model = tiny_wan(4)
    x, t, text = inputs(batch, frames, height, width)
    router = router_for(host, {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 1, "end_layer_idx": -2}]})
    with torch.no_grad():
        assert routed_forward(model, x, t, text, router, torch.Generator().manual_seed(0)).shape == x.shape


def test_gradients_reach_the_lora_weights_of_routed_over_blocks(host):
    from peft import LoraConfig, inject_adapter_in_model

    from tuner_wan.plugin import LORA_TARGETS
    from tuner_wan.routing import routed_forward

    model = tiny_wan(6).train()
    model.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=4, target_modules=LORA_TARGETS), model)
    model.enable_gradient_checkpointing()  # the routed forward honours it as diffusers does
    x, t, text = inputs()
    router = router_for(host, {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 1, "end_layer_idx": -2}]})
    routed_forward(model, x, t, text, router, torch.Generator().manual_seed(0)).square().mean().backward()
    # lora_B's gradients (lora_A's are zero at init, when lora_B is zero), block by block.
    lora_b = [{n: p for n, p in block.named_parameters() if "lora_B" in n} for block in model.blocks]
    assert len(lora_b) == 6 and all(len(b) == len(lora_b[0]) > 0 for b in lora_b), "every block carries the adapter"
    no_gradient = [f"blocks.{i}.{n}" for i, b in enumerate(lora_b) for n, p in b.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_gradient == []


# -- through the hooks -------------------------------------------------------


def test_wan_loss_routes_in_training_only_and_repeats_with_the_seed(host, tiny_model_dir, deep_transformer):
    config = resolve_config(
        {
            "wan": {
                "pretrained_model_name_or_path": str(tiny_model_dir("wan")),
                "pretrained_transformer_model_name_or_path": str(deep_transformer),
            },
            "tread_config": GUIDE_FIVE_ROUTES,
        },
        host,
    )
    bundle = host.load_model(config, torch.device("cpu"))
    assert bundle.supports_token_routing and bundle.num_blocks == 30
    bundle.run.router = host.route_tokens(bundle, config)
    check_routing(bundle, bundle.run.router)
    x, _, text = inputs()
    batch = {"latents": x, "prompt_embeds": text}

    def loss():
        return float(host.compute_loss(bundle, batch, torch.Generator().manual_seed(4), config).loss)

    with torch.no_grad():
        bundle.denoiser.train()
        routed = loss()
        assert routed == loss()
        bundle.denoiser.eval()  # validation / eval: the full model
        full = loss()
        router, bundle.run.router = bundle.run.router, None
        assert full == loss()
        bundle.run.router = router
    assert routed != full


@pytest.fixture(scope="module")
def transformer_of_depth(tmp_path_factory):
    """``transformer_of_depth(n)`` -> a folder with an n-block tiny Wan transformer (written once)."""
    made = {}

    def get(depth: int):
        if depth not in made:
            made[depth] = tmp_path_factory.mktemp(f"wan-{depth}-blocks")
            tiny_wan(depth).save_pretrained(str(made[depth] / "transformer"))
        return made[depth]

    return get


@pytest.fixture(scope="module")
def deep_transformer(transformer_of_depth):
    """30 blocks, the depth of Wan 2.1 1.3B, which the guide's five routes are written for."""
    return transformer_of_depth(30)


def _run_overrides(deep, tread_config) -> list[str]:
    def toml(value):
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + "}"
        if isinstance(value, list):
            return "[" + ", ".join(toml(v) for v in value) + "]"
        return repr(value)

    return [
        "plugins=['wan', 'tread']",
        f"wan.pretrained_transformer_model_name_or_path='{deep}'",
        f"tread_config={toml(tread_config)}",  # top level, as the guide writes it
        "validation.validation_prompt=''",
        "train.learning_rate=2e-3",  # 30 blocks at init start far off: a bigger step shows learning in 40 steps
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tread_config", "depth"),
    [(GUIDE_ONE_ROUTE, 6), (GUIDE_FIVE_ROUTES, 30)],  # 2..-2 fits any depth from 4; the five need 26+
    ids=["one-route", "five-routes"],
)
def test_training_with_the_guide_routes_learns(make_run, cli, transformer_of_depth, tread_config, depth):
    from tuner.report.jsonlog import read_log

    config = make_run(steps=30, overrides=_run_overrides(transformer_of_depth(depth), tread_config))
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    losses = [r["loss"] for r in read_log(config.parent / "output") if r["event"] == "step"]
    assert len(losses) == 30
    assert np.mean(losses[-10:]) < 0.9 * np.mean(losses[:10])


def test_routes_deeper_than_the_model_stop_the_run_before_training(make_run, cli):
    config = make_run(steps=2, overrides=["plugins=['wan', 'tread']", "validation.validation_prompt=''",
                                          "tread_config={routes = [{selection_ratio = 0.1, start_layer_idx = 2, end_layer_idx = -2}]}"])
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 2
    assert "tread_config.routes[0].start_layer_idx = 2 is outside this model's 2 blocks" in result.stderr
    assert not (config.parent / "output" / "train_log.jsonl").exists()


class _HiddenStateTap:
    """A CREPA-like feature: it reads the hidden states block 8 outputs."""

    @hookimpl
    def prepare_model(self, bundle, config, phase):
        bundle.run.block_taps["crepa"] = 8


def test_a_feature_tapping_a_routed_block_stops_the_run_at_start_up(make_run, deep_transformer):
    from tuner.config import read_config_file
    from tuner.train.run import train

    path = make_run(steps=2, overrides=_run_overrides(deep_transformer, GUIDE_FIVE_ROUTES))
    host = PluginHost.build(["wan", "tread"], extra={"tap": _HiddenStateTap()})
    config = resolve_config(read_config_file(path), host, path.parent)
    with pytest.raises(PluginError, match=r"crepa reads the hidden states of block 8.*\(blocks 2..8\)"):
        train(config, host)
    assert not list(path.parent.rglob("*.safetensors")), "refused before anything was encoded or trained"

"""The offload plugin: group offload, block swap, model CPU offload, start-up offload, chunked feed-forward.

On a CPU the accelerator and the offload target are the same memory, so moving weights proves
nothing by itself. Offloading to disk does: an offloaded tensor's memory is released, and here it is
filled with NaN as well, so any computation that reads a weight the schedule has sent out (in
forward, or in backward and the checkpointed recomputation that precedes it) turns the loss or the
gradients into NaN. Offloading in training requires gradient checkpointing (without recomputation
autograd would keep every block's weights alive from forward to backward), so the models here
checkpoint.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import load_file

from tuner.config import resolve_config
from tuner.errors import ConfigError, PluginError
from tuner.plugins import PluginHost
from tuner.testing.runs import run_output_dir, step_losses
from tuner.types.bundle import ModelBundle

PLUGINS = "plugins=['wan','offload']"
NO_VALIDATION = "validation.validation_prompt=''"


@pytest.fixture
def poisoned_disk(monkeypatch):
    """Offloaded-to-disk tensors read as NaN until the schedule brings them back."""
    from diffusers.hooks.group_offloading import ModuleGroup

    original = ModuleGroup._offload_to_disk

    def offload_and_poison(self):
        original(self)
        for tensor in self.tensor_to_key:
            tensor.data.fill_(float("nan"))

    monkeypatch.setattr(ModuleGroup, "_offload_to_disk", offload_and_poison)


@pytest.fixture(scope="module")
def host():
    return PluginHost.build(["wan", "offload"])


def tiny_adapted_wan(layers: int = 3, checkpointing: bool = False):
    from diffusers import WanTransformer3DModel

    from tuner_wan.tiny import TINY_TRANSFORMER

    torch.manual_seed(0)
    model = WanTransformer3DModel(**{**TINY_TRANSFORMER, "num_layers": layers}).requires_grad_(False)
    targets = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False), model)
    if checkpointing:
        model.enable_gradient_checkpointing()
    return model


def loss_and_grads(model):
    g = torch.Generator().manual_seed(1)
    x, e = torch.randn(2, 16, 3, 8, 8, generator=g), torch.randn(2, 7, 32, generator=g)
    out = model(hidden_states=x, timestep=torch.tensor([300.0, 700.0]), encoder_hidden_states=e, return_dict=False)[0]
    loss = out.pow(2).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def offloaded(model, host, tmp_path, **options):
    options = {"enable_group_offload": True, "group_offload_to_disk_path": str(tmp_path), **options}
    config = resolve_config({"gradient_checkpointing": True, **options}, host)
    bundle = ModelBundle("wan", model, [], block_lists=["blocks"])
    host.prepare_model(bundle, config, "adapted", torch.device("cpu"))
    return model


@pytest.fixture(scope="module")
def reference():
    return loss_and_grads(tiny_adapted_wan())


@pytest.mark.parametrize(
    "options",
    [{}, {"group_offload_blocks_per_group": 2}, {"group_offload_type": "leaf_level"}],
    ids=["block", "two-blocks", "leaf"],
)
def test_group_offload_brings_weights_back_for_backward(host, tmp_path, poisoned_disk, reference, options):
    want_loss, want_grads = reference
    model = offloaded(tiny_adapted_wan(checkpointing=True), host, tmp_path, **options)
    for _ in range(2):  # a second step starts from the offloaded state the first one left
        model.zero_grad(set_to_none=True)
        loss, grads = loss_and_grads(model)
        assert torch.equal(loss, want_loss)
        assert grads.keys() == want_grads.keys()
        assert all(torch.equal(grads[k], want_grads[k]) for k in grads)
    hooks = [m._diffusers_hook.get_hook("group_offloading") for m in model.modules() if hasattr(m, "_diffusers_hook")]
    streamed = [p for hook in hooks if hook is not None for p in hook.unit.params]
    assert streamed and all(torch.isnan(p).all() for p in streamed), "after backward every streamed weight is out"
    assert all(torch.isfinite(p).all() for p in model.parameters() if p.requires_grad), "the adapter never moves"


def test_backward_keeps_at_most_three_groups_in(host, tmp_path, monkeypatch):
    """Checkpointing recomputes a block without finishing its forward (it stops once it has what backward
    needs), so nothing but the schedule sends the block out again: without it the whole model would
    pile up on the accelerator during backward."""
    from tuner_offload.streaming import Schedule

    most = []
    bring_in = Schedule.bring_in

    def counting(self, unit):
        bring_in(self, unit)
        most.append(sum(u.onloaded for u in self.units))

    monkeypatch.setattr(Schedule, "bring_in", counting)
    model = offloaded(tiny_adapted_wan(layers=6, checkpointing=True), host, tmp_path)
    loss_and_grads(model)
    assert len(most) > 6 and max(most) <= 3, most  # 6 groups; in backward: this one and the two before
    hooks = [m._diffusers_hook.get_hook("group_offloading") for m in model.modules() if hasattr(m, "_diffusers_hook")]
    assert not any(h.unit.onloaded for h in hooks if h is not None), "all out once backward ends"


def test_group_offload_under_no_grad_matches_and_reports_the_onload_device(host, tmp_path, poisoned_disk):
    reference = tiny_adapted_wan().eval()
    model = offloaded(tiny_adapted_wan(), host, tmp_path).eval()
    x, e = torch.randn(1, 16, 3, 8, 8), torch.randn(1, 5, 32)
    with torch.no_grad():
        want = reference(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=e).sample
        got = model(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=e).sample
    assert torch.equal(got, want)
    # diffusers sees the model as group offloaded: .device is the onload device and .to() leaves it alone
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    assert _is_group_offload_enabled(model) and model.device == torch.device("cpu")


def test_offloading_refuses_a_quantized_base(host, tmp_path):
    pytest.importorskip("optimum.quanto")
    from optimum.quanto import freeze, qint8, quantize

    model = tiny_adapted_wan()
    quantize(model, weights=qint8, include=["blocks.*"])
    freeze(model)
    with pytest.raises(PluginError, match="tensor subclasses .*quantized base"):
        offloaded(model, host, tmp_path)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"enable_group_offload": True, "enable_model_cpu_offload": True}, "enable_group_offload and enable_model_cpu"),
        ({"enable_group_offload": True, "blocks_to_swap": 2}, "enable_group_offload and blocks_to_swap both"),
        ({"enable_model_cpu_offload": True, "blocks_to_swap": 2}, "enable_model_cpu_offload and blocks_to_swap"),
        ({"group_offload_use_stream": True}, "only apply with enable_group_offload = true"),
        ({"feed_forward_chunk_size": 512}, "only applies with enable_chunked_feed_forward"),
        ({"enable_chunked_feed_forward": True, "feed_forward_chunk_size": 0}, "must be at least 1"),
        (
            {"enable_group_offload": True, "group_offload_type": "leaf_level", "group_offload_blocks_per_group": 2},
            "only applies to group_offload_type = 'block_level'",
        ),
    ],
)
def test_conflicting_or_stray_options_are_refused(host, options, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(options, host)


def test_mutually_exclusive_offloads_stop_the_cli_with_one_line(make_run, cli):
    config = make_run(steps=1, overrides=[PLUGINS, "enable_group_offload=true", "enable_model_cpu_offload=true"])
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 2
    assert "error:" in result.stderr and "cannot be combined" in result.stderr


def test_offloading_in_training_needs_gradient_checkpointing(host, tmp_path):
    for options in ({"enable_group_offload": True}, {"blocks_to_swap": 1}):
        bundle = ModelBundle("wan", tiny_adapted_wan(), [], block_lists=["blocks"])
        with pytest.raises(ConfigError, match="only with gradient checkpointing .*set gradient_checkpointing = true"):
            host.prepare_model(bundle, resolve_config(options, host), "adapted", torch.device("cpu"))


def test_swapping_every_block_is_refused(host):
    config = resolve_config({"blocks_to_swap": 3, "gradient_checkpointing": True}, host)
    bundle = ModelBundle("wan", tiny_adapted_wan(layers=3), [], block_lists=["blocks"])
    with pytest.raises(ConfigError, match="blocks_to_swap = 3 but the denoiser has 3 blocks"):
        host.prepare_model(bundle, config, "adapted", torch.device("cpu"))


def test_a_family_that_names_no_blocks_gets_a_clear_error(host, tmp_path):
    config = resolve_config({"enable_group_offload": True, "gradient_checkpointing": True}, host)
    with pytest.raises(PluginError, match="does not name its denoiser's blocks"):
        host.prepare_model(ModelBundle("toy", tiny_adapted_wan(), []), config, "adapted", torch.device("cpu"))


def test_use_stream_off_cuda_is_a_notice_not_an_error(host, capsys):
    options = {"enable_group_offload": True, "group_offload_use_stream": True, "gradient_checkpointing": True}
    config = resolve_config(options, host)
    bundle = ModelBundle("wan", tiny_adapted_wan(), [], block_lists=["blocks"])
    host.prepare_model(bundle, config, "adapted", torch.device("cpu"))
    assert "group_offload_use_stream needs CUDA" in capsys.readouterr().err


def test_networks_take_turns_one_at_a_time(monkeypatch):
    """Which network is where, tracked by hand: on a CPU every device is the same memory."""
    from tuner_offload import juggling

    where: dict[int, str] = {}

    class Net(torch.nn.Linear):
        def to(self, device):  # records the move instead of making it
            where[id(self)] = str(device)
            return self

    monkeypatch.setattr(juggling, "_on_accelerator", lambda m: where.get(id(m)) == "accel")
    monkeypatch.setattr("accelerate.utils.send_to_device", lambda obj, device: obj)  # no "accel" device here
    vae, text, denoiser = Net(2, 2), Net(2, 2), Net(2, 2)
    turns = juggling.Turns("accel")
    turns.add_encoder(vae)
    turns.add_encoder(text)
    turns.add_denoiser(denoiser, movable=False)  # offload during start-up: the denoiser stays put
    where[id(denoiser)] = "accel"
    x = torch.randn(1, 2)
    vae(x)
    assert (where[id(vae)], where[id(text)]) == ("accel", "cpu")
    text(x)
    assert (where[id(vae)], where[id(text)]) == ("cpu", "accel")
    denoiser(x)
    assert (where[id(vae)], where[id(text)], where[id(denoiser)]) == ("cpu", "cpu", "accel")
    vae._hf_hook.pre_forward(vae)  # how diffusers' apply_forward_hook starts a VAE's encode() or decode()
    assert where[id(vae)] == "accel" and vae._hf_hook.execution_device == "accel"


# -- chunked feed-forward ----------------------------------------------------


def test_chunked_feed_forward_gives_the_unchunked_output(host):
    reference = tiny_adapted_wan()
    model = tiny_adapted_wan()
    config = resolve_config({"enable_chunked_feed_forward": True, "feed_forward_chunk_size": 16}, host)
    host.prepare_model(ModelBundle("wan", model, []), config, "base", torch.device("cpu"))
    want_loss, want_grads = loss_and_grads(reference)  # 3 x 4 x 4 = 48 tokens: three chunks
    loss, grads = loss_and_grads(model)
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=0)
    for k in grads:
        torch.testing.assert_close(grads[k], want_grads[k], rtol=1e-5, atol=1e-7)


def _feed_forward_batches(model) -> list[int]:
    """Record the batch size each feed-forward call of block 0 sees (below the chunking hook)."""
    seen: list[int] = []
    model.blocks[0].ffn.net[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    return seen


def test_the_guides_chunk_size_2_chunks_the_batch_as_the_guide_means_with_the_same_output(host, capsys):
    """The guide's feed_forward_chunk_size 2 counts samples (SimpleTuner's batch axis), not tokens."""
    model = tiny_adapted_wan()
    seen = _feed_forward_batches(model)
    config = resolve_config(
        {"enable_chunked_feed_forward": True, "feed_forward_chunk_size": 2, "train_batch_size": 2}, host
    )
    host.prepare_model(ModelBundle("wan", model, []), config, "base", torch.device("cpu"))
    assert "feed-forward chunk size 2 is read as the guide's: samples of the batch per chunk" in capsys.readouterr().err
    want_loss, want_grads = loss_and_grads(tiny_adapted_wan())
    loss, grads = loss_and_grads(model)  # a batch of 2: a chunk as large as the batch holds half of it
    assert seen == [1, 1], "one sample at a time, every token of it"
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=0)
    for k in grads:
        torch.testing.assert_close(grads[k], want_grads[k], rtol=1e-5, atol=1e-7)


def test_feed_forward_chunk_size_from_the_environment(host, monkeypatch, capsys):
    from tuner_offload.chunking import HOOK_NAME

    monkeypatch.setenv("WAN_FEED_FORWARD_CHUNK_SIZE", "32")
    model = tiny_adapted_wan()
    host.prepare_model(ModelBundle("wan", model, []), resolve_config({}, host), "base", torch.device("cpu"))
    hook = model.blocks[0].ffn._diffusers_hook.get_hook(HOOK_NAME)
    assert hook is not None
    assert "WAN_FEED_FORWARD_CHUNK_SIZE=32: feed-forward layers run over 32 tokens" in capsys.readouterr().err
    # The guide's value: samples per chunk.
    monkeypatch.setenv("WAN_FEED_FORWARD_CHUNK_SIZE", "2")
    model = tiny_adapted_wan()
    seen = _feed_forward_batches(model)
    host.prepare_model(ModelBundle("wan", model, []), resolve_config({"train_batch_size": 2}, host), "base",
                       torch.device("cpu"))
    assert "WAN_FEED_FORWARD_CHUNK_SIZE=2: feed-forward chunk size 2 is read as the guide's" in capsys.readouterr().err
    loss_and_grads(model)
    assert seen == [1, 1]
    monkeypatch.setenv("WAN_FEED_FORWARD_CHUNK_SIZE", "0")  # SimpleTuner's "off"
    model = tiny_adapted_wan()
    host.prepare_model(ModelBundle("wan", model, []), resolve_config({}, host), "base", torch.device("cpu"))
    assert getattr(model.blocks[0].ffn, "_diffusers_hook", None) is None
    monkeypatch.setenv("WAN_FEED_FORWARD_CHUNK_SIZE", "-3")
    with pytest.raises(ConfigError, match="WAN_FEED_FORWARD_CHUNK_SIZE='-3': feed_forward_chunk_size must be at least 1"):
        host.prepare_model(ModelBundle("wan", tiny_adapted_wan(), []), resolve_config({}, host), "base", torch.device("cpu"))


def test_a_plugins_environment_variable_is_not_ignored_silently_when_the_plugin_is_off(make_run, cli, monkeypatch):
    monkeypatch.setenv("WAN_FEED_FORWARD_CHUNK_SIZE", "2")
    config = make_run(steps=1)
    result = cli(["config", "show", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    assert (
        "WAN_FEED_FORWARD_CHUNK_SIZE is set, but the 'offload' plugin that reads it is not enabled: it has no effect"
        ' (enable it: plugins = [..., "offload"])'
    ) in " ".join(result.stderr.split())
    result = cli(["config", "show", "--config", str(config), "--plugin", "offload"])
    assert "WAN_FEED_FORWARD_CHUNK_SIZE is set" not in result.stderr


# -- whole runs on the tiny Wan ---------------------------------------------


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, tiny_model_dir):
    from tuner.testing.runs import run_cli, write_run_folder

    config = write_run_folder(
        tmp_path_factory.mktemp("offload-baseline"), tiny_model_dir("wan"), plugin="wan", steps=3,
        overrides=[PLUGINS, NO_VALIDATION],
    )
    assert run_cli(["train", "--config", str(config)]).exit_code == 0
    return config


@pytest.mark.parametrize(
    "options, installed",
    [
        (["enable_group_offload=true", "gradient_checkpointing=true"], "group offload: 2 block groups stream from disk"),
        (["blocks_to_swap=1", "gradient_checkpointing=true"], "block swap: blocks 1-1 of 2 stream"),
        (["enable_model_cpu_offload=true"], "model CPU offload: text_encoder, vae, the denoiser take turns"),
        (["offload_during_startup=true"], "offload during start-up: text_encoder, vae take turns"),
        (["enable_chunked_feed_forward=true", "feed_forward_chunk_size=32"], "chunked feed-forward: feed-forward layers run over 32 tokens at a time (2 layers)"),
    ],
    ids=["group-offload", "block-swap", "model-cpu-offload", "startup-offload", "chunked-ff"],
)
def test_training_with_the_option_repeats_the_baseline(
    baseline, make_run, cli, options, installed, poisoned_disk, tmp_path
):
    if "enable_group_offload=true" in options:
        options = [*options, f"group_offload_to_disk_path='{tmp_path / 'spill'}'"]
    config = make_run(steps=3, overrides=[PLUGINS, NO_VALIDATION, *options])
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    assert installed in result.stderr
    chunked = "enable_chunked_feed_forward=true" in options
    want, got = step_losses(run_output_dir(baseline)), step_losses(run_output_dir(config))
    assert got == pytest.approx(want, rel=1e-5 if chunked else 0, abs=0)
    a = load_file(run_output_dir(baseline) / "pytorch_lora_weights.safetensors")
    b = load_file(run_output_dir(config) / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4 if chunked else 0, atol=1e-6 if chunked else 0)


def test_group_offload_validates_through_the_pipeline(make_run, cli, tmp_path, poisoned_disk):
    import numpy as np

    from tuner.media import read_media

    def frames(*options):
        config = make_run(name="offloaded" if options else "plain", steps=1, overrides=[PLUGINS, *options])
        result = cli(["train", "--config", str(config)])
        assert result.exit_code == 0, result.stderr
        assert ("group offload:" in result.stderr) == bool(options)
        return read_media(next((run_output_dir(config) / "validation").rglob("*.mp4")))

    plain = frames()
    spilled = frames(
        "enable_group_offload=true", "gradient_checkpointing=true", f"group_offload_to_disk_path='{tmp_path / 'spill'}'"
    )
    assert np.array_equal(plain, spilled)


@pytest.mark.parametrize(("size", "batch", "says"), [
    (2, 1, "a batch of 1 is not split"),
    (2, 2, "the batch of 2 runs 1 sample(s) at a time"),
    (1, 3, "the batch of 3 runs 1 sample(s) at a time"),
])
def test_the_chunk_size_is_described_in_one_consistent_line(host, capsys, size, batch, says):
    model = tiny_adapted_wan()
    seen = _feed_forward_batches(model)
    config = resolve_config(
        {"enable_chunked_feed_forward": True, "feed_forward_chunk_size": size, "train_batch_size": batch}, host
    )
    host.prepare_model(ModelBundle("wan", model, []), config, "base", torch.device("cpu"))
    lines = [line for line in capsys.readouterr().err.splitlines() if "feed-forward" in line]
    assert len(lines) == 1 and says in lines[0], lines
    assert "run over 2 sample(s)" not in lines[0]
    with torch.no_grad():
        model(hidden_states=torch.randn(batch, 16, 3, 8, 8), timestep=torch.tensor([500.0] * batch),
              encoder_hidden_states=torch.randn(batch, 7, 32), return_dict=False)
    assert set(seen) == {1}, "what the line says is what runs"

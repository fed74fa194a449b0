"""CREPA: its maths, gradients, caching of the teacher's features, start-up refusals and training on tiny Wan."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tuner.config import read_config_file, resolve_config
from tuner.errors import ConfigError, PluginError
from tuner.plugins import PluginHost
from tuner.report.jsonlog import read_log
from tuner.train.checkpoints import read_checkpoint
from tuner_crepa.alignment import crepa_weight, cross_frame_alignment, make_projector, neighbour_weights, project, unit_patches
from tuner_crepa.settings import CrepaSection
from tuner_crepa.teacher import frame_groups, teacher_grid


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def crepa(dino, *extra):
    return ["plugins=['wan', 'crepa']", "crepa_enabled=true", "crepa_block_index=0", f"crepa_encoder='{dino}'",
            "crepa_encoder_image_size=28", "validation.validation_prompt=''", *extra]


def steps_of(config):
    out = config.parent / read_config_file(config)["train"]["output_dir"]
    return [r for r in read_log(out) if r["event"] == "step"]


# -- maths -------------------------------------------------------------------


def _align(student, teacher, distance, tau):
    """cross_frame_alignment as the plugin calls it: unit teacher patches, the weights of the clip's shape."""
    weights = neighbour_weights(student.shape[1], student.shape[2], distance, tau)
    return cross_frame_alignment(student, unit_patches(teacher), weights)


def _by_definition(student, teacher, distance, tau):
    """The score as docs/crepa.md defines it, frame by frame and neighbour by neighbour."""
    cos = torch.nn.functional.cosine_similarity
    frames = student.shape[1]
    scores = []
    for b in range(student.shape[0]):
        per_frame = []
        for f in range(frames):
            near = [g for g in range(frames) if abs(f - g) <= distance]
            w = [math.exp(-abs(f - g) / tau) for g in near]
            sims = [cos(student[b, f], teacher[b, g], dim=-1).mean() for g in near]
            per_frame.append(sum(wi * si for wi, si in zip(w, sims)) / sum(w))
        scores.append(torch.stack(per_frame).mean())
    return torch.stack(scores)


def test_alignment_is_one_for_identical_features_and_weights_neighbours_by_distance():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 4, 6, 8, generator=g)
    score, same = _align(teacher * 3.0, teacher, distance=1, tau=1.0)
    assert torch.allclose(same, torch.ones(2)) and (score < 1).all()  # neighbours differ from the frame
    score0, same0 = _align(teacher, teacher, distance=0, tau=1.0)
    assert torch.allclose(score0, torch.ones(2)) and torch.allclose(same0, torch.ones(2))
    # Two frames, d = 1: frame f scores (sim(f, f) + e^-1 sim(f, other)) / (1 + e^-1), sim = mean patch cosine.
    a, b, c = (torch.randn(1, 1, 5, 8, generator=g) for _ in range(3))
    student, target = torch.cat([a, b], 1), torch.cat([a, c], 1)

    def sim(x, y):
        return torch.nn.functional.cosine_similarity(x, y, dim=-1).mean()

    w = math.exp(-1.0)
    expected = ((1 + w * sim(a, c)) / (1 + w) + (sim(b, c) + w * sim(b, a)) / (1 + w)) / 2
    score, _ = _align(student, target, distance=1, tau=1.0)
    assert float(score) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("frames, distance, tau", [(1, 1, 1.0), (5, 0, 1.0), (5, 1, 1.0), (6, 2, 0.5), (3, 4, 2.0)])
def test_the_batched_score_and_its_gradient_match_the_definition(frames, distance, tau):
    g = torch.Generator().manual_seed(frames + distance)
    student = torch.randn(2, frames, 6, 8, generator=g, requires_grad=True)
    teacher = torch.randn(2, frames, 6, 8, generator=g)
    score, same = _align(student, teacher, distance, tau)
    expected = _by_definition(student, teacher, distance, tau)
    assert torch.allclose(score, expected, atol=1e-6)
    assert torch.allclose(same, _by_definition(student, teacher, 0, 1.0), atol=1e-6) and not same.requires_grad
    (grad,) = torch.autograd.grad(score.sum(), student)
    (expected_grad,) = torch.autograd.grad(expected.sum(), student)
    assert torch.allclose(grad, expected_grad, atol=1e-6)


def test_teacher_frames_keep_their_aspect():
    assert teacher_grid(256, 256, 224, 14) == (16, 16)
    rows, columns = teacher_grid(480, 832, 518, 14)  # Wan's 480p: about 37 x 37 patches, shaped like the frame
    assert (rows, columns) == (28, 49) and abs(rows * columns - 37 * 37) < 37


def test_weight_schedule_warms_up_decays_and_cuts_off():
    s = CrepaSection(crepa_lambda=0.5, crepa_scheduler="cosine", crepa_warmup_steps=10, crepa_decay_steps=100)
    assert crepa_weight(s, 0, 200) == 0.0 and crepa_weight(s, 5, 200) == pytest.approx(0.25)
    assert crepa_weight(s, 10, 200) == pytest.approx(0.5) and crepa_weight(s, 60, 200) == pytest.approx(0.25)
    assert crepa_weight(s, 110, 200) == pytest.approx(0.0)
    linear = CrepaSection(crepa_lambda=1.0, crepa_scheduler="linear", crepa_lambda_end=0.2)
    assert crepa_weight(linear, 50, 100) == pytest.approx(0.6)  # decays over the whole run
    assert crepa_weight(CrepaSection(crepa_cutoff_step=30), 29, 100) == 0.5
    assert crepa_weight(CrepaSection(crepa_cutoff_step=30), 30, 100) == 0.0


def test_latent_frames_gather_their_pixel_frames():
    # Wan: 17 pixel frames -> 5 latent frames: frame 0 alone, then runs of 4.
    assert [list(g) for g in frame_groups(17, 4)] == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]
    assert len(frame_groups(3, 1)) == 3


def test_projector_is_float32_and_its_init_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    projector = make_projector(64, 32, seed=7)
    assert torch.equal(state, torch.get_rng_state())
    assert all(p.dtype == torch.float32 for p in projector.parameters())
    assert isinstance(projector[0], torch.nn.LayerNorm) and projector[1].out_features == 32
    assert not list(projector[0].parameters())  # its scale and shift would repeat the Linear's
    # bf16 hidden states (a model in bf16): float32 out, within bf16 rounding of the float32 path.
    hidden = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(1))
    low = project(projector, hidden.bfloat16())
    assert low.dtype == torch.float32 and torch.allclose(low, project(projector, hidden), atol=0.05)
    assert torch.equal(projector[1].weight, make_projector(64, 32, seed=7)[1].weight)


# -- the per-step term on tiny Wan ------------------------------------------------


def _set_up(make_run, tiny_dino, *extra):
    from tuner.train.adapters import attach_adapters

    path = make_run(steps=1, overrides=crepa(tiny_dino, *extra))
    host = PluginHost.build(["wan", "crepa"])
    config = resolve_config(read_config_file(path), host, path.parent)
    bundle = host.load_model(config, torch.device("cpu"))
    adapter = attach_adapters(bundle, config.train, bundle.lora_target_modules)
    if config.train.gradient_checkpointing:
        bundle.denoiser.enable_gradient_checkpointing()
    host.prepare_model(bundle, config, "adapted", torch.device("cpu"))
    bundle.denoiser.train()
    g = torch.Generator().manual_seed(0)
    batch = {
        "latents": torch.randn(2, 16, 5, 8, 8, generator=g),
        "prompt_embeds": torch.randn(2, 16, 32, generator=g),
        # (batch, latent frames, 2 x 2 patches, dim), unit length as cached
        "crepa_features": unit_patches(torch.randn(2, 5, 2, 2, 32, generator=g)).half(),
    }
    return host, config, bundle, adapter, batch


def _term(host, config, bundle, batch, seed=0):
    out = host.compute_loss(bundle, batch, torch.Generator().manual_seed(seed), config)
    (term,) = host.auxiliary_losses(bundle, batch, out, 0, config)
    return out, term


def test_crepa_gradients_reach_only_the_lora_up_to_its_block_and_the_projector(make_run, tiny_dino):
    host, config, bundle, adapter, batch = _set_up(make_run, tiny_dino)
    assert bundle.run.block_taps == {"crepa_block_index": 0}
    (projector,) = bundle.run.trainables.values()
    _, term = _term(host, config, bundle, batch)
    assert term.weight == 0.5 and {"crepa_loss", "crepa_alignment", "crepa_weight"} <= set(term.logs)
    term.loss.backward()
    names = {id(p): n for n, p in bundle.denoiser.named_parameters()}
    for param in adapter.params:
        name = names[id(param)]
        moved = param.grad is not None and bool(param.grad.abs().sum() > 0)
        if name.startswith("blocks.1.") or "lora_A" in name:
            # Block 1 comes after the tapped block; lora_A gets no gradient while lora_B is still zero.
            assert not moved, name
        elif name.startswith("blocks.0.") and "lora_B" in name:
            assert moved, name
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())
    frozen = [n for n, p in bundle.denoiser.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not frozen


def test_capture_is_the_same_with_gradient_checkpointing(make_run, tiny_dino):
    host, config, bundle, _, batch = _set_up(make_run, tiny_dino)
    _, plain = _term(host, config, bundle, batch)
    plain.loss.backward()
    host2, config2, bundle2, _, _ = _set_up(make_run, tiny_dino, "train.gradient_checkpointing=true")
    _, checkpointed = _term(host2, config2, bundle2, batch)
    checkpointed.loss.backward()  # the block runs again here; its output must not be taken for the next step
    assert torch.equal(plain.loss.detach(), checkpointed.loss.detach())
    _, again = _term(host2, config2, bundle2, batch)
    assert torch.equal(again.loss.detach(), checkpointed.loss.detach())


def test_nothing_is_captured_in_validation(make_run, tiny_dino):
    host, config, bundle, _, batch = _set_up(make_run, tiny_dino)
    plugin = host.pm.get_plugin("crepa")
    bundle.denoiser.eval()
    with torch.no_grad():
        host.compute_loss(bundle, batch, torch.Generator().manual_seed(0), config)
    assert plugin.capture.take(bundle.denoiser) is None


# -- start-up ----------------------------------------------------------------------


def test_a_capture_block_inside_a_tread_route_is_refused_with_both_options(make_run, tiny_dino, cli):
    config = make_run(steps=1, overrides=[*crepa(tiny_dino), "plugins=['wan', 'crepa', 'tread']",
                                          "tread_config={routes = [{selection_ratio = 0.5, start_layer_idx = 0, end_layer_idx = 0}]}"])
    result = cli(["train", "--config", str(config)])
    assert result.exit_code != 0
    assert "crepa_block_index reads the hidden states of block 0" in result.stderr
    assert "tread_config" in result.stderr


def test_crepa_outside_the_tread_route_trains(make_run, tiny_dino, cli):
    config = make_run(steps=2, overrides=[*crepa(tiny_dino), "plugins=['wan', 'crepa', 'tread']",
                                          "tread_config={routes = [{selection_ratio = 0.5, start_layer_idx = 1, end_layer_idx = 1}]}"])
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    assert all("crepa_alignment" in s for s in steps_of(config))


def test_a_block_index_beyond_the_model_is_refused(make_run, tiny_dino, cli):
    result = cli(["train", "--config", str(make_run(steps=1, overrides=crepa(tiny_dino, "crepa_block_index=8")))])
    assert result.exit_code != 0 and "crepa_block_index = 8 is outside this model's 2 blocks" in result.stderr


def test_an_encoder_that_cannot_be_loaded_says_which_cache_to_fill(make_run, tiny_dino, cli, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tiny_dino.parent / "empty-hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tiny_dino.parent / "empty-hub"))
    config = make_run(steps=1, overrides=crepa(tiny_dino, "crepa_encoder='dinov2_vits14'", "crepa_encoder_image_size=224"))
    result = cli(["train", "--config", str(config)])
    assert result.exit_code != 0
    line = result.stderr.strip().splitlines()[-1]
    assert "crepa_encoder = 'dinov2_vits14': cannot load facebook/dinov2-small" in line and "empty-hub" in line


def test_an_image_size_off_the_patch_grid_is_refused(make_run, tiny_dino, cli):
    result = cli(["train", "--config", str(make_run(steps=1, overrides=crepa(tiny_dino, "crepa_encoder_image_size=30")))])
    assert result.exit_code != 0 and "crepa_encoder_image_size = 30 is not a multiple of the teacher's patch size 14" in result.stderr


def test_a_family_without_a_token_grid_is_refused(tmp_path, tiny_dino):
    from tuner.data.synthetic import write_synthetic_clips
    from tuner.testing.toy import ToyFamily, toy_config
    from tuner.train.run import train
    from tuner_crepa.plugin import CrepaPlugin

    write_synthetic_clips(tmp_path / "clips", count=1, num_frames=3, width=16, height=16)
    host = PluginHost.build([], extra={"toy": ToyFamily(), "crepa": CrepaPlugin()})
    cfg = toy_config(tmp_path, max_train_steps=1)
    cfg["crepa"] = {"crepa_enabled": True, "crepa_encoder": str(tiny_dino), "crepa_encoder_image_size": 28}
    with pytest.raises(PluginError, match="model family 'toy' does not describe its frames of tokens"):
        train(resolve_config(cfg, host), host)


# -- training runs -------------------------------------------------------------------


def test_crepa_lambda_zero_changes_nothing_but_the_logs(make_run, tiny_dino, cli):
    plain = make_run(name="plain", steps=4, overrides=["validation.validation_prompt=''"])
    zero = make_run(name="zero", steps=4, overrides=crepa(tiny_dino, "crepa_lambda=0.0"))
    for config in (plain, zero):
        assert cli(["train", "--config", str(config)]).exit_code == 0
    a, b = steps_of(plain), steps_of(zero)
    assert [s["loss"] for s in a] == [s["loss"] for s in b]
    assert "crepa_alignment" in b[0] and "crepa_alignment" not in a[0] and b[0]["crepa_weight"] == 0.0
    fa = load_file(plain.parent / "output" / "pytorch_lora_weights.safetensors")
    fb = load_file(zero.parent / "output" / "pytorch_lora_weights.safetensors")
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)


def test_alignment_rises_over_a_short_training(make_run, tiny_dino, cli):
    config = make_run(steps=40, overrides=crepa(tiny_dino, "crepa_lambda=1.0", "train.learning_rate=0.01"))
    assert cli(["train", "--config", str(config)]).exit_code == 0
    aligned = [s["crepa_alignment"] for s in steps_of(config)]
    assert np.mean(aligned[-8:]) > np.mean(aligned[:8]) + 0.3


def test_resume_is_bit_identical_with_the_projector(make_run, tiny_dino, cli):
    options = crepa(tiny_dino, "train.learning_rate=0.01", "train.checkpoint_step_interval=3")
    straight = make_run(name="straight", steps=6, overrides=options)
    assert cli(["train", "--config", str(straight)]).exit_code == 0
    half = make_run(name="resumed", steps=3, overrides=options)
    assert cli(["train", "--config", str(half)]).exit_code == 0
    resumed = make_run(name="resumed", steps=6, overrides=[*options, "train.resume_from_checkpoint='latest'"])
    assert cli(["train", "--config", str(resumed)]).exit_code == 0
    a, _ = read_checkpoint(straight.parent / "output" / "checkpoint-6")
    b, _ = read_checkpoint(resumed.parent / "output" / "checkpoint-6")
    assert len(a["params"]) == len(b["params"]) and all(torch.equal(x, y) for x, y in zip(a["params"], b["params"]))
    fa = load_file(straight.parent / "output" / "pytorch_lora_weights.safetensors")
    fb = load_file(resumed.parent / "output" / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(fa[k], fb[k]) for k in fa) and not [k for k in fa if "crepa" in k]


def test_flux_images_get_repa_on_their_image_tokens_and_the_alignment_rises(make_run, tiny_dino, cli):
    # Flux: one frame of 4 x 4 image tokens per 64 x 64 still (its text tokens left out), a 2 x 2 teacher grid.
    options = [*crepa(tiny_dino, "crepa_lambda=1.0", "train.learning_rate=0.01"), "plugins=['flux', 'crepa']"]
    config = make_run(plugin="flux", steps=40, overrides=options)
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    steps = steps_of(config)
    aligned = [s["crepa_alignment"] for s in steps]
    # One frame has no neighbours: the cross-frame score is the same-frame alignment (loss = 1 - alignment).
    assert all(s["crepa_loss"] == pytest.approx(1 - s["crepa_alignment"], abs=1e-5) for s in steps)
    assert np.mean(aligned[-8:]) > np.mean(aligned[:8]) + 0.3


def test_cached_features_need_no_teacher_weights_and_drop_the_vae_encoder(make_run, tiny_dino, cli, tmp_path):
    import shutil

    dino = tmp_path / "dino-copy"
    shutil.copytree(tiny_dino, dino)
    refused = make_run(name="first", steps=1, overrides=crepa(dino, "crepa_drop_vae_encoder=true"))
    result = cli(["train", "--config", str(refused)])
    assert result.exit_code != 0 and "crepa_drop_vae_encoder = true, but 2 clip(s) have no cached latents" in result.stderr
    first = make_run(name="first", steps=1, overrides=crepa(dino, "crepa_export_projector=true"))
    assert cli(["train", "--config", str(first)]).exit_code == 0
    assert load_file(first.parent / "output" / "crepa_projector.safetensors")
    for weights in dino.glob("*.safetensors"):
        weights.unlink()  # only config.json is left: the features are in the cache
    again = make_run(name="first", steps=2, overrides=[*crepa(dino, "crepa_drop_vae_encoder=true"), "train.output_dir='again'",
                                                       "validation.validation_prompt='a clip'"])
    result = cli(["train", "--config", str(again)])
    assert result.exit_code == 0, result.stderr
    assert "encoding clips" not in result.stderr + result.output
    assert "crepa_drop_vae_encoder: freed the encoder of 'vae'" in result.stderr + result.output
    assert (again.parent / "again" / "validation" / "step-2" / "main.mp4").is_file(), "the decoder still validates"


def test_both_wan_22_experts_train_with_a_projector_each(make_run, tiny_dino, cli):
    options = crepa(tiny_dino, "wan.wan_train_both_experts=true", "train.train_batch_size=2", "train.learning_rate=0.01")
    config = make_run(steps=6, variant="t2v-14b-2.2-high", overrides=options)
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    assert all("crepa_alignment" in s for s in steps_of(config))
    state, _ = read_checkpoint(config.parent / "output" / "checkpoint-6")
    shapes = [tuple(p.shape) for p in state["params"]]
    # Last come the two projectors (high-noise, then low-noise expert): Linear(32 -> 32) weight, bias each.
    assert shapes[-4:] == [(32, 32), (32,)] * 2


@pytest.mark.parametrize("offload", [["blocks_to_swap=1"], ["enable_group_offload=true"]], ids=["block-swap", "group-offload"])
def test_crepa_with_offloading_and_checkpointing_repeats_the_plain_run(make_run, tiny_dino, cli, offload, tmp_path):
    common = crepa(tiny_dino, "train.gradient_checkpointing=true", "train.learning_rate=0.01")
    plain = make_run(name="plain", steps=3, overrides=common)
    if "enable_group_offload=true" in offload:
        offload = [*offload, f"group_offload_to_disk_path='{tmp_path / 'spill'}'"]
    offloaded = make_run(name="offloaded", steps=3, overrides=[*common, "plugins=['wan', 'crepa', 'offload']", *offload])
    for config in (plain, offloaded):
        result = cli(["train", "--config", str(config)])
        assert result.exit_code == 0, result.stderr
    a, b = steps_of(plain), steps_of(offloaded)
    assert [(s["loss"], s["crepa_loss"]) for s in a] == [(s["loss"], s["crepa_loss"]) for s in b]
    fa = load_file(plain.parent / "output" / "pytorch_lora_weights.safetensors")
    fb = load_file(offloaded.parent / "output" / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(fa[k], fb[k]) for k in fa)


def test_dropping_the_vae_encoder_is_refused_for_image_to_video(tiny_dino):
    from torch import nn

    from tuner.types.bundle import ModelBundle
    from tuner_crepa.teacher import DinoFeatures, TeacherInfo

    vae = nn.Module()
    vae.encoder = nn.Linear(2, 2)
    bundle = ModelBundle("wan", nn.Identity(), [], components={"vae": vae}, encoders={"vae": "latent"},
                         temporal_compression=4, image_conditioned=True)
    section = CrepaSection(crepa_enabled=True, crepa_drop_vae_encoder=True)
    features = DinoFeatures(section, TeacherInfo(str(tiny_dino), 32, 14), bundle)
    with pytest.raises(ConfigError, match="generates from a first frame"):
        features.start(0)
    assert vae.encoder is not None
    bundle.image_conditioned = False
    features.start(0)
    assert vae.encoder is None

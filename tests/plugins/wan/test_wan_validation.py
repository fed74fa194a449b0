"""Wan validation on the tiny model: media, seeds, skip-layer guidance, samplers, eval loss, one CLI run."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tuner.config import read_config_file, resolve_config
from tuner.demo import prepare_tiny_model
from tuner.errors import ConfigError
from tuner.media import SHEET_LABEL, SHEET_PAD, read_media
from tuner.plugins import PluginHost
from tuner.report.jsonlog import read_log
from tuner.types.validation import SkipLayerGuidance
from tuner.validate.rounds import check_validation, run_validation

SMALL = {"validation_resolution": "32x32", "validation_num_video_frames": 5, "validation_num_inference_steps": 4,
         "validation_guidance": 3.0, "validation_prompt": "a red square moving right on a black background"}


@pytest.fixture(scope="module")
def wan(tiny_model_dir, tmp_path_factory):
    """A host and a loaded tiny Wan bundle, shared by the tests below; ``config(**options)`` makes configs."""
    host = PluginHost.build(["wan"])
    overrides = prepare_tiny_model(host, "wan", tiny_model_dir("wan"))
    folder = tmp_path_factory.mktemp("wan-validation")

    def config(wan_options: dict[str, Any] | None = None, **validation: Any):
        raw: dict[str, Any] = {"plugins": ["wan"], "model_family": "wan", "train": {"output_dir": str(folder / "out")},
                               "validation": {**SMALL, **validation}, "wan": dict(wan_options or {})}
        for key, value in overrides.items():
            section, _, name = key.partition(".")
            raw.setdefault(section, {})[name] = value
        return resolve_config(raw, host, base_dir=folder)

    base = config()
    bundle = host.load_model(base, torch.device("cpu"))
    return host, bundle, config, folder


def test_a_round_writes_browser_playable_mp4s_and_a_contact_sheet(wan):
    host, bundle, config, folder = wan
    (folder / "lib.json").write_text(json.dumps({"blue circle/left": "a blue circle moving left on a white background"}))
    result = run_validation(host, bundle, config(user_prompt_library="lib.json"), 3)
    step_dir = folder / "out" / "validation" / "step-3"
    assert sorted(p.name for p in step_dir.iterdir()) == ["blue_circle_left.mp4", "contact-sheet.png", "main.mp4"]
    import av

    with av.open(str(result.media["main"])) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
    for path in result.media.values():
        assert read_media(path).shape == (5, 32, 32, 3)
    sheet = Image.open(result.contact_sheet)
    assert sheet.size == (SHEET_PAD + 5 * (32 + SHEET_PAD), SHEET_PAD + 2 * (SHEET_LABEL + 32 + SHEET_PAD)), "5 frames x 2 prompts"


def test_the_same_validation_seed_gives_identical_videos_twice(wan):
    host, bundle, config, folder = wan
    from tuner.types.validation import ValidationRequest
    from tuner.validate.inference import inference_state

    request = ValidationRequest(step=0, key="main", prompt=SMALL["validation_prompt"], negative_prompt="", num_frames=5,
                                width=32, height=32, num_inference_steps=4, guidance_scale=3.0, seed=42, output_dir=folder)
    with inference_state(bundle):
        rendered = [host.validate(bundle, request).frames["main"] for _ in range(2)]
    assert np.array_equal(*rendered), "the same seed, the same frames"
    rounds = []
    for step, seed in [(10, 42), (11, 42), (12, 43)]:
        result = run_validation(host, bundle, config(validation_seed=seed), step)
        rounds.append((np.asarray(Image.open(result.contact_sheet)), result.media["main"].read_bytes()))
        torch.randn(1000)  # whatever training draws in between
    (sheet, video), (sheet_again, video_again), (other_sheet, _) = rounds
    # The contact sheet is lossless: the rendered frames are the same to the bit, and so is the mp4.
    assert np.array_equal(sheet, sheet_again), "the same seed, the same frames, round after round"
    assert video == video_again, "the same frames, the same file"
    assert np.abs(sheet.astype(int) - other_sheet).mean() > 1, "another seed, another clip"


def _count_block_calls(transformer: Any) -> tuple[dict[int, int], list[Any]]:
    """Calls of each block's self-attention: a skipped block never reaches it."""
    calls = {i: 0 for i in range(len(transformer.blocks))}
    handles = [
        block.attn1.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, block in enumerate(transformer.blocks)
    ]
    return calls, handles


def test_skip_layer_guidance_changes_the_output_and_skips_exactly_the_named_blocks(wan):
    host, bundle, config, _ = wan
    transformer = bundle.components["pipeline"].transformer
    calls, handles = _count_block_calls(transformer)
    try:
        guided = config(validation_guidance_skip_layers=[1], validation_guidance_skip_layers_start=0.0,
                        validation_guidance_skip_layers_stop=1.0)
        skipped = read_media(run_validation(host, bundle, guided, 21).media["main"])
        assert calls == {0: 4 * 3, 1: 4 * 2}, "cond, uncond and the skip pass; block 1 sits the skip pass out"

        calls.update({0: 0, 1: 0})
        late = config(validation_guidance_skip_layers=[0], validation_guidance_skip_layers_start=0.5,
                      validation_guidance_skip_layers_stop=1.0)
        run_validation(host, bundle, late, 22)
        assert calls == {0: 4 * 2, 1: 4 * 2 + 2}, "only steps 2 and 3 of 4 get the skip pass"

        calls.update({0: 0, 1: 0})
        plain = read_media(run_validation(host, bundle, config(), 23).media["main"])
        assert calls == {0: 8, 1: 8}, "the skip hooks are gone afterwards"
        assert np.abs(skipped.astype(int) - plain.astype(int)).mean() > 1.0, "visibly different"
    finally:
        for handle in handles:
            handle.remove()


def test_the_guides_skip_layers_are_refused_at_start_up_on_a_model_without_that_block(wan):
    host, bundle, config, _ = wan
    guide = config(validation_guidance_skip_layers=[9], validation_guidance_skip_layers_start=0.0,
                   validation_guidance_skip_layers_stop=1.0)
    with pytest.raises(ConfigError, match=r"names block 9, but this wan model has 2 blocks \(0..1\)"):
        check_validation(host, bundle, guide)
    check_validation(host, bundle, config(validation_guidance_skip_layers=[1]))
    with pytest.raises(ConfigError, match=r"validation_num_video_frames = 6 .* use 5 or 9"):
        check_validation(host, bundle, config(validation_num_video_frames=6))
    with pytest.raises(ConfigError, match=r"validation_resolution 40x32 must be a multiple of 16 .* use 32x32"):
        check_validation(host, bundle, config(validation_resolution="32x32,40x32"))


def test_the_sampler_matches_wan_pipeline_when_skip_layer_guidance_is_off(wan):
    from tuner_wan.sampling import sample_clip

    host, bundle, config, folder = wan
    pipe = bundle.components["pipeline"]
    request_config = config()
    from tuner.types.validation import ValidationRequest

    request = ValidationRequest(step=0, key="main", prompt="", negative_prompt="blurry", num_frames=5, width=32, height=32,
                                num_inference_steps=4, guidance_scale=3.0, seed=5, output_dir=folder)
    ours = sample_clip(pipe, request, request_config.validation.validation_prompt, pipe.scheduler, 32)
    theirs = pipe(request_config.validation.validation_prompt, negative_prompt="blurry", height=32, width=32,
                  num_frames=5, num_inference_steps=4, guidance_scale=3.0, generator=torch.Generator().manual_seed(5),
                  output_type="np", max_sequence_length=32).frames[0]
    assert np.array_equal(ours, theirs)
    slg = dataclasses.replace(request, skip_layer_guidance=SkipLayerGuidance((0,), 0.0, 1.0, 2.8))
    assert not np.array_equal(sample_clip(pipe, slg, "a red square", pipe.scheduler, 32), ours)


def test_unipc_by_default_and_euler_on_request(wan):
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    from tuner_wan.sampling import make_scheduler

    host, bundle, config, _ = wan
    loaded = bundle.components["pipeline"].scheduler
    assert bundle.components["validation_sampler"] == "unipc" and isinstance(loaded, UniPCMultistepScheduler)
    euler = make_scheduler("euler", loaded)
    assert isinstance(euler, FlowMatchEulerDiscreteScheduler) and euler.config.shift == loaded.config.flow_shift
    euler_config = config({"wan_validation_sampler": "euler"})
    euler_bundle = host.load_model(euler_config, torch.device("cpu"))
    unipc = read_media(run_validation(host, bundle, config(), 30).media["main"])
    other = read_media(run_validation(host, euler_bundle, euler_config, 31).media["main"])
    assert not np.array_equal(unipc, other)


def test_hook_eval_loss_on_wan_is_compute_loss_at_given_noise_levels(wan):
    from tuner.train.timesteps import training_sigmas

    host, bundle, config, _ = wan
    run_config = config()
    g = torch.Generator().manual_seed(0)
    batch = {"latents": torch.randn(2, 16, 3, 4, 4, generator=g), "prompt_embeds": torch.randn(2, 32, 32, generator=g)}
    sigmas = torch.tensor([0.25, 0.75])
    a = host.eval_loss(bundle, batch, sigmas, torch.Generator().manual_seed(1), run_config)
    b = host.eval_loss(bundle, batch, sigmas, torch.Generator().manual_seed(1), run_config)
    assert a.shape == (2,) and torch.equal(a, b)
    # compute_loss draws its noise levels first, then the noise: given the same levels and noise they agree.
    gen = torch.Generator().manual_seed(7)
    drawn = training_sigmas(run_config, 2, gen, 4 * 4 * 8 * 8, "cpu")
    per_sample = host.eval_loss(bundle, batch, drawn, gen, run_config)
    loss = host.compute_loss(bundle, batch, torch.Generator().manual_seed(7), run_config).loss
    assert torch.allclose(per_sample.mean(), loss, rtol=1e-5)


@pytest.mark.slow
def test_a_cli_run_validates_a_baseline_logs_eval_loss_and_writes_a_model_card(make_run, cli):
    overrides = [
        "validation.validation_on_startup=true",
        "validation.validation_resolution='32x32'",
        "validation.validation_num_video_frames=5",
        "validation.validation_num_inference_steps=3",
        "validation.validation_step_interval=0",
        "evaluation.eval_steps_interval=1",
        "evaluation.eval_split=0.5",
        "evaluation.eval_timesteps=2",
    ]
    config = make_run(name="wan-report", steps=2, clips=2, overrides=overrides)
    result = cli(["train", "--config", str(config), "--set", "console.log_format='json'"])
    assert result.exit_code == 0, result.stderr
    out = config.parent / read_config_file(config)["train"]["output_dir"]
    events = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events if e["event"] in ("validation", "step")] == ["validation", "step", "step", "validation"]
    assert [r["eval_loss"] > 0 for r in read_log(out) if r["event"] == "step"] == [True, True]
    assert (out / "validation" / "step-0" / "main.mp4").is_file() and (out / "validation" / "step-2" / "contact-sheet.png").is_file()
    card = (out / "README.md").read_text()
    assert "(model family `wan`, flavour `t2v-480p-1.3b-2.1`)" in card and "validation/step-2/main.mp4" in card
    assert "pipeline_tag: text-to-video" in card and "url: validation/step-2/main.mp4" in card  # the Hub's widget
    assert "license: apache-2.0" in card


def test_each_sampler_step_moves_the_rounds_progress(wan, capsys, monkeypatch):
    from tuner import progress
    from tuner.types.validation import ValidationRequest
    from tuner.validate.inference import inference_state

    host, bundle, config, folder = wan
    steps: list[int] = []
    request = ValidationRequest(step=0, key="main", prompt=SMALL["validation_prompt"], negative_prompt="", num_frames=5,
                                width=32, height=32, num_inference_steps=4, guidance_scale=3.0, seed=42, output_dir=folder,
                                on_sampler_step=lambda: steps.append(1))
    with inference_state(bundle):
        host.validate(bundle, request)
    assert len(steps) == 4, "one call per sampler step"
    monkeypatch.setattr(progress, "PLAIN_GAP_S", 0.0)  # a line per 5%: here every step
    progress.set_log_format("auto")
    capsys.readouterr()
    run_validation(host, bundle, config(), 7)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("validation (step 7")]
    assert [line.split(": ")[1].split(",")[0].split(" in")[0] for line in lines] == ["1/4 steps", "2/4 steps", "3/4 steps",
                                                                                   "4/4 steps"]
    assert "ETA" in lines[0]


def test_loading_keeps_the_hubs_download_bars():
    import diffusers.utils.logging as dlog
    import huggingface_hub.utils as hub
    import transformers.utils.logging as tlog

    from tuner_wan.loading import _quiet_library_bars

    hub.enable_progress_bars()
    with _quiet_library_bars():
        assert not dlog.is_progress_bar_enabled() and not tlog.is_progress_bar_enabled(), "per-file loading bars hidden"
        assert not hub.are_progress_bars_disabled(), "download bars shown"
    assert dlog.is_progress_bar_enabled() and tlog.is_progress_bar_enabled()

"""Wan sampler previews (validation_preview) on the tiny models: T2V, the two-stage 2.2 sampler, TI2V, a CLI run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tuner.config import resolve_config
from tuner.demo import prepare_tiny_model
from tuner.media import SHEET_LABEL, SHEET_PAD, read_media
from tuner.plugins import PluginHost
from tuner.types.validation import ValidationRequest
from tuner.validate.inference import inference_state
from tuner.validate.rounds import run_validation

PROMPT = "a red square moving right on a black background"


@pytest.fixture(scope="module")
def host():
    return PluginHost.build(["wan"])


def _bundle(host, tiny_model_dir, flavour=None, **wan):
    section = {"pretrained_model_name_or_path": str(tiny_model_dir("wan", flavour)), "max_sequence_length": 32}
    if flavour:
        section["model_flavour"] = flavour
    return host.load_model(resolve_config({"wan": {**section, **wan}}, host), torch.device("cpu"))


def _request(tmp_path, steps=(), **fields: Any) -> ValidationRequest:
    base = dict(step=0, key="main", prompt=PROMPT, negative_prompt="", num_frames=9, width=32, height=32,
                num_inference_steps=4, guidance_scale=3.0, seed=3, output_dir=tmp_path, preview_steps=steps)
    return ValidationRequest(**{**base, **fields})


def _render(host, bundle, request):
    with inference_state(bundle):
        return host.validate(bundle, request)


def test_previews_are_the_first_frames_of_each_steps_estimate_and_leave_the_clip_unchanged(host, tiny_model_dir, tmp_path):
    bundle = _bundle(host, tiny_model_dir)
    assert bundle.renders_previews
    plain = _render(host, bundle, _request(tmp_path))
    result = _render(host, bundle, _request(tmp_path, steps=(1, 2, 3, 4)))
    assert np.array_equal(result.frames["main"], plain.frames["main"]), "previews do not change the clip"
    previews = result.preview_frames["main"]
    assert sorted(previews) == [1, 2, 3, 4]
    # Two of the clip's three latent frames: 1 + 4 frames, at full size.
    assert all(p.shape == (5, 32, 32, 3) for p in previews.values())
    assert all(np.abs(previews[s] - previews[s + 1]).mean() > 1e-3 for s in (1, 2, 3)), "each step's estimate differs"
    assert np.abs(previews[4] - plain.frames["main"][:5]).mean() < np.abs(previews[1] - plain.frames["main"][:5]).mean()
    only = _render(host, bundle, _request(tmp_path, steps=(2, 4)))
    assert sorted(only.preview_frames["main"]) == [2, 4] and np.array_equal(only.preview_frames["main"][2], previews[2])


def test_with_euler_the_last_steps_preview_is_the_clips_first_frames(host, tiny_model_dir, tmp_path):
    # Euler's last step goes to sigma 0, where the clip is exactly the denoised estimate; and the VAE is causal,
    # so the preview's frames are the clip's first frames.
    bundle = _bundle(host, tiny_model_dir, wan_validation_sampler="euler")
    result = _render(host, bundle, _request(tmp_path, steps=(4,)))
    assert np.abs(result.preview_frames["main"][4] - result.frames["main"][:5]).max() < 1e-4


def test_two_stage_sampling_previews_steps_of_both_experts(host, tiny_model_dir, tmp_path):
    bundle = _bundle(host, tiny_model_dir, "t2v-14b-2.2-high", wan_validation_load_other_stage=True)
    high, low = (expert.module for expert in bundle.experts)
    calls = {"high": 0, "low": 0}
    handles = [m.register_forward_hook(lambda *_, n=n: calls.__setitem__(n, calls[n] + 1)) for n, m in
               (("high", high), ("low", low))]
    try:
        result = _render(host, bundle, _request(tmp_path, steps=(1, 5, 10), num_inference_steps=10, guidance_scale=1.0))
    finally:
        for handle in handles:
            handle.remove()
    assert calls["high"] and calls["low"], "both experts sampled"
    previews = result.preview_frames["main"]
    assert sorted(previews) == [1, 5, 10] and np.abs(previews[1] - previews[10]).mean() > 1e-3


def test_ti2v_previews_start_from_the_given_first_frame(host, tiny_model_dir, tmp_path):
    from tuner.data.synthetic import render_clip

    bundle = _bundle(host, tiny_model_dir, "ti2v-5b-2.2")
    image = render_clip("circle", "yellow", "grey", "left", 1, 64, 64)
    request = _request(tmp_path, steps=(1, 3), num_inference_steps=3, guidance_scale=1.0, width=64, height=64,
                       conditioning_frames=image)
    result = _render(host, bundle, request)
    video, previews = result.frames["main"], result.preview_frames["main"]
    assert previews[1].shape == (5, 64, 64, 3)
    # TI2V puts the clean first latent frame back in every estimate, as it does before the final decode.
    assert np.abs(previews[1][0] - video[0]).max() < 1e-3 and np.abs(previews[3][0] - video[0]).max() < 1e-3
    assert np.abs(previews[1][1:] - previews[3][1:]).mean() > 1e-3


def test_a_round_with_the_guides_options_writes_previews_and_shows_them_on_the_sheet(host, tiny_model_dir, tmp_path):
    overrides = prepare_tiny_model(host, "wan", tiny_model_dir("wan"))
    raw: dict[str, Any] = {"plugins": ["wan"], "model_family": "wan", "train": {"output_dir": str(tmp_path / "out")},
                           "validation_prompt": PROMPT, "validation_resolution": "32x32",
                           "validation_num_video_frames": 9, "validation_num_inference_steps": 20,
                           "validation_preview": True, "validation_preview_steps": 5}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        raw.setdefault(section, {})[name] = value
    config = resolve_config(raw, host, base_dir=tmp_path)
    bundle = host.load_model(config, torch.device("cpu"))
    folder = tmp_path / "out" / "validation" / "step-7"
    seen: list[tuple[str, int, bool, bool]] = []

    def report(key: str, step: int, path: Path) -> None:  # while sampling: the clip itself is not written yet
        seen.append((key, step, path.is_file(), any(folder.glob("main.*"))))

    result = run_validation(host, bundle, config, 7, on_preview=report)
    assert seen == [("main", s, True, False) for s in (5, 10, 15, 20)]
    assert sorted(p.name for p in (folder / "previews").iterdir()) == [
        "main-step-10.mp4", "main-step-15.mp4", "main-step-20.mp4", "main-step-5.mp4"
    ]
    assert sorted(result.previews["main"]) == [5, 10, 15, 20]
    assert read_media(result.previews["main"][5]).shape == (5, 32, 32, 3)
    record = json.loads((folder.parent / ".step-7.json").read_text())
    assert record["previews"]["main"]["20"] == "previews/main-step-20.mp4"
    sheet = Image.open(result.contact_sheet)
    assert sheet.height == SHEET_PAD + 2 * (SHEET_LABEL + 32 + SHEET_PAD), "the clip's row and its previews' row"
    plain = run_validation(host, bundle, resolve_config({**raw, "validation_preview": False}, host, base_dir=tmp_path), 8)
    assert plain.previews == {} and not (folder.parent / "step-8" / "previews").exists()
    # The same clip with and without previews: compared on the lossless sheets (the clip's row is the top one),
    # not through x264, whose output for the same frames was seen to vary inside the full suite.
    with_previews, without = np.asarray(sheet), np.asarray(Image.open(plain.contact_sheet))
    assert np.array_equal(with_previews[: without.shape[0], : without.shape[1]], without)



@pytest.mark.slow
def test_a_cli_run_with_the_guides_preview_keys_logs_and_writes_the_previews(make_run, cli):
    from tuner.config import read_config_file
    from tuner.report.jsonlog import read_log

    overrides = [
        "validation.validation_resolution='32x32'",
        "validation.validation_num_video_frames=5",
        "validation.validation_num_inference_steps=4",
        "validation_preview=true",  # written flat, as the guide writes them
        "validation_preview_steps=2",
    ]
    config = make_run(name="wan-previews", steps=1, clips=1, overrides=overrides)
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    out = config.parent / read_config_file(config)["train"]["output_dir"]
    rounds = [r for r in read_log(out) if r["event"] == "validation"]
    assert [sorted(r["previews"]["main"], key=int) for r in rounds] == [["2", "4"]]
    assert all(Path(p).is_file() for p in rounds[0]["previews"]["main"].values())

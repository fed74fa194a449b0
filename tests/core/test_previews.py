"""validation_preview: the steps asked for, the files, the contact-sheet rows, the trackers; on the toy family."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tuner import hookimpl
from tuner.config import resolve_config
from tuner.data.synthetic import write_synthetic_clips
from tuner.errors import ConfigError, PluginError
from tuner.media import SHEET_GAP, SHEET_LABEL, SHEET_PAD, read_media
from tuner.plugins import PluginHost
from tuner.testing.toy import ToyFamily, toy_config
from tuner.testing.toy_model import toy_prompt_vector
from tuner.types.bundle import ModelBundle
from tuner.types.validation import ValidationResult
from tuner.validate.rounds import check_validation, round_complete, run_validation
from tuner.validate.settings import ValidationSection


def _pixels(x: torch.Tensor) -> np.ndarray:
    """Toy latents -> frames ``(F, H, W, 3)`` in [0, 1], four pixels per latent pixel."""
    frames = (x[0].permute(1, 2, 3, 0).clamp(-1, 1) + 1) / 2
    return frames.repeat_interleave(4, 1).repeat_interleave(4, 2).numpy()


class PreviewToy(ToyFamily):
    """The toy family with previews: the denoised estimate ``x - sigma * v`` at each requested step."""

    def __init__(self, renders: bool = True, skip: int | None = None, streams: bool = False) -> None:
        super().__init__()
        self.renders, self.skip, self.streams = renders, skip, streams
        self.requests: list[Any] = []
        self.sampling: tuple[str, int] | None = None  # (clip, sampler step) while validate runs

    @hookimpl
    def load_model(self, config: Any, device: torch.device) -> ModelBundle:
        bundle = ToyFamily.load_model(self, config, device)
        bundle.renders_previews = self.renders
        return bundle

    @hookimpl
    def validate(self, bundle, request):  # type: ignore[override]
        self.requests.append(request)
        result = ValidationResult(step=request.step)
        steps = request.num_inference_steps
        key = request.key
        g = torch.Generator().manual_seed(request.seed)
        x = torch.randn(1, 3, request.num_frames, request.height // 4, request.width // 4, generator=g)
        for i, sigma in enumerate(torch.linspace(1.0, 0.0, steps + 1)[:-1]):
            v = bundle.denoiser(x, sigma.view(1), toy_prompt_vector(request.prompt)[None])
            self.sampling = (key, i + 1)
            if i + 1 in request.preview_steps and i + 1 != self.skip:
                result.preview_frames.setdefault(key, {})[i + 1] = _pixels(x - sigma * v)
                if self.streams and request.on_preview is not None:
                    request.on_preview(key, i + 1, result.preview_frames[key][i + 1])
            x = x - v / steps
        result.frames[key] = _pixels(x)
        self.sampling = None
        return result


@pytest.fixture
def toy(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    return tmp_path


def _setup(
    folder: Path, family: ToyFamily, top: dict[str, Any] | None = None, **validation: Any
) -> tuple[PluginHost, Any, ModelBundle]:
    host = PluginHost.build([], extra={"toy": family})
    raw = {**toy_config(folder), **(top or {})}
    raw["validation"].update({"validation_num_video_frames": 3, **validation})
    config = resolve_config(raw, host, base_dir=folder)
    return host, config, host.load_model(config, torch.device("cpu"))


def test_preview_steps_are_every_nth_sampler_step_as_the_guide_says():
    guide = ValidationSection(validation_preview=True, validation_preview_steps=5, validation_num_inference_steps=20)
    assert guide.preview_steps() == (5, 10, 15, 20)
    assert ValidationSection(validation_preview=True, validation_num_inference_steps=3).preview_steps() == (1, 2, 3)
    uneven = ValidationSection(validation_preview=True, validation_preview_steps=3, validation_num_inference_steps=10)
    assert uneven.preview_steps() == (3, 6, 9)
    assert ValidationSection(validation_preview_steps=5).preview_steps() == (), "off by default"


def test_preview_options_are_checked_when_the_config_loads(tmp_path):
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    raw = toy_config(tmp_path)
    with pytest.raises(ConfigError, match="validation_preview_steps = 5 is above validation_num_inference_steps = 4"):
        resolve_config({**raw, "validation_preview": True, "validation_preview_steps": 5}, host, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="validation_preview_steps"):
        resolve_config({**raw, "validation_preview": True, "validation_preview_steps": 0}, host, base_dir=tmp_path)
    # The guide's spelling at the top level, and previews switched off while the file keeps its step count.
    config = resolve_config({**raw, "validation_preview": False, "validation_preview_steps": 9}, host, base_dir=tmp_path)
    assert config.validation.preview_steps() == ()


def test_a_round_writes_previews_at_the_right_steps_and_puts_them_under_each_clip_on_the_sheet(toy):
    family = PreviewToy()
    host, config, bundle = _setup(toy, family, validation_preview=True, validation_preview_steps=2)
    result = run_validation(host, bundle, config, 3)
    assert family.requests[-1].preview_steps == (2, 4)
    step_dir = toy / "out" / "validation" / "step-3"
    assert sorted(p.name for p in (step_dir / "previews").iterdir()) == ["main-step-2.mp4", "main-step-4.mp4"]
    assert sorted(result.previews["main"]) == [2, 4]
    early, last = (read_media(result.previews["main"][s]) for s in (2, 4))
    final = read_media(result.media["main"])
    assert early.shape == last.shape == final.shape == (3, 16, 16, 3)
    assert np.abs(early.astype(int) - last).mean() > 1, "the estimate changes between steps"

    assert Image.open(result.contact_sheet).height == SHEET_PAD + 2 * (SHEET_LABEL + 16 + SHEET_PAD), (
        "the clip's row, then its previews' row"
    )
    assert round_complete(config, 3)
    (step_dir / "previews" / "main-step-2.mp4").unlink()
    assert not round_complete(config, 3), "a round missing a preview is rendered again"


def test_the_preview_row_shows_each_step_left_to_right(toy):
    # One frame per clip: PNGs, lossless, so the sheet's cells compare exactly with the files.
    host, config, bundle = _setup(toy, PreviewToy(), validation_num_video_frames=1, validation_preview=True)
    result = run_validation(host, bundle, config, 3)
    previews = {s: read_media(p)[0].astype(int) for s, p in result.previews["main"].items()}
    assert sorted(previews) == [1, 2, 3, 4]
    assert all(not np.array_equal(previews[s], previews[s + 1]) for s in (1, 2, 3)), "each step differs"
    sheet = np.asarray(Image.open(result.contact_sheet)).astype(int)
    y = SHEET_PAD + (SHEET_LABEL + 16 + SHEET_PAD) + SHEET_LABEL
    for i, step in enumerate([1, 2, 3, 4]):
        x = SHEET_PAD + i * (16 + SHEET_PAD + SHEET_PAD + SHEET_GAP)
        assert np.array_equal(sheet[y : y + 16, x : x + 16], previews[step]), f"step {step} is cell {i}"
    final = read_media(result.media["main"])[0].astype(int)
    assert np.abs(previews[4] - final).max() <= 1, "the last step's estimate is where the sampler ends"


def test_previews_off_by_default_ask_for_nothing_and_write_nothing(toy):
    family = PreviewToy()
    host, config, bundle = _setup(toy, family)
    result = run_validation(host, bundle, config, 1)
    assert family.requests[-1].preview_steps == () and result.previews == {}
    assert not (toy / "out" / "validation" / "step-1" / "previews").exists()
    assert Image.open(result.contact_sheet).height == SHEET_PAD + SHEET_LABEL + 16 + SHEET_PAD


def test_with_ema_comparison_each_weight_variant_gets_its_own_preview_row(toy):
    import contextlib

    family = PreviewToy()
    host = PluginHost.build([], extra={"toy": family})
    raw = toy_config(toy, use_ema=True, ema_validation="comparison")
    raw["validation"].update({"validation_num_video_frames": 1, "validation_preview": True, "validation_preview_steps": 4})
    config = resolve_config(raw, host, base_dir=toy)
    bundle = host.load_model(config, torch.device("cpu"))
    result = run_validation(host, bundle, config, 2, use_ema=contextlib.nullcontext)
    assert {k: sorted(v) for k, v in result.previews.items()} == {"main": [4], "main-ema": [4]}
    assert result.previews["main-ema"][4].name == "main-ema-step-4.png"
    assert Image.open(result.contact_sheet).height == SHEET_PAD + 3 * (SHEET_LABEL + 16 + SHEET_PAD)


def test_a_family_without_previews_gets_a_notice_and_no_request(toy, capsys):
    family = PreviewToy(renders=False)
    host, config, bundle = _setup(toy, family, validation_preview=True)
    check_validation(host, bundle, config)
    assert "validation_preview is ignored: the toy family does not render" in capsys.readouterr().err.replace("\n", " ")
    result = run_validation(host, bundle, config, 1)
    assert family.requests[-1].preview_steps == () and result.previews == {}


def test_a_family_that_leaves_out_a_requested_preview_is_named(toy):
    host, config, bundle = _setup(toy, PreviewToy(skip=3), validation_preview=True)
    with pytest.raises(PluginError, match="plugin 'toy': validate returned no preview of step 3 for prompt 'main'"):
        run_validation(host, bundle, config, 1)


def test_tensorboard_logs_each_preview_under_its_own_tag(toy):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tuner.report.trackers import Trackers
    from tuner.types.training import RunInfo

    top = {"report_to": "tensorboard", "tracker_run_name": "previews"}
    host, config, bundle = _setup(toy, PreviewToy(), top, validation_preview=True, validation_preview_steps=2)
    result = run_validation(host, bundle, config, 6)
    trackers = Trackers()
    run = RunInfo(output_dir=toy / "out", max_train_steps=6, start_step=0, family="toy", config=config)
    trackers.on_run_start(run)
    trackers.on_validation_done(run, result)
    assert len(trackers.active) == 1, "the tracker took the previews without failing (a failure drops it)"
    trackers.on_run_end(run, {}, None)
    events = EventAccumulator(str(toy / "out" / "logs" / "tuner" / "previews"), size_guidance={"images": 0}).Reload()
    found = [tag for tag in events.Tags()["images"] if "validation_preview" in tag]
    assert found == ["validation_preview/main/step-002", "validation_preview/main/step-004"]
    assert [e.step for e in events.Images("validation_preview/main/step-004")] == [6], "logged at the training step"


class PreviewRecorder:
    """Records each reported preview, with where the family's sampler was when it came."""

    def __init__(self, family: PreviewToy) -> None:
        self.family = family
        self.events: list[tuple[Any, ...]] = []

    @hookimpl
    def on_validation_preview(self, run, step, key, sampler_step, path):  # type: ignore[no-untyped-def]
        self.events.append(("preview", step, key, sampler_step, path.is_file(), self.family.sampling))

    @hookimpl
    def on_validation_done(self, run, result):  # type: ignore[no-untyped-def]
        self.events.append(("done", result.step))


@pytest.mark.parametrize("streams", [True, False])
def test_hook_on_validation_preview_reports_each_file_as_the_sampler_makes_it(toy, streams):
    from tuner.train.run import train

    family = PreviewToy(streams=streams)
    recorder = PreviewRecorder(family)
    host = PluginHost.build([], extra={"toy": family, "rec": recorder})
    raw = toy_config(toy, max_train_steps=1)
    raw["validation"].update(validation_num_video_frames=1, validation_preview=True, validation_preview_steps=2)
    train(resolve_config(raw, host, base_dir=toy), host)
    # A streaming family's previews arrive while it is still sampling, at the step they show;
    # one that returns them at the end has them reported after it, each in turn, before the round's end.
    where = [("main", 2), ("main", 4)] if streams else [None, None]
    assert recorder.events == [
        ("preview", 1, "main", 2, True, where[0]), ("preview", 1, "main", 4, True, where[1]), ("done", 1),
    ]  # fmt: skip

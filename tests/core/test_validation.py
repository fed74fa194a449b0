"""Validation rounds, media, prompts, the schedule and the evaluation loss, on the toy family."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tuner import hookimpl
from tuner.config import resolve_config
from tuner.data.synthetic import write_synthetic_clips
from tuner.errors import ConfigError, DataError, PluginError
from tuner.media import SHEET_GAP, SHEET_LABEL, SHEET_PAD, contact_sheet, read_media, thumbnails, write_video
from tuner.plugins import PluginHost
from tuner.report.jsonlog import read_log
from tuner.testing.toy import ToyFamily, toy_config
from tuner.testing.toy_model import toy_prompt_vector
from tuner.train.run import train
from tuner.types.validation import ValidationResult
from tuner.validate.evaluation import EvalLoss, eval_sigmas, split_eval_samples
from tuner.validate.prompts import BUILTIN_PROMPTS, file_stems, round_prompts
from tuner.validate.rounds import run_validation
from tuner.validate.schedule import eval_due, validation_due
from tuner.validate.settings import EvaluationSection, ValidationSection


class FrameToy(ToyFamily):
    """The toy family rendering clips the recommended way: it returns frames, the core writes them."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    @hookimpl
    def validate(self, bundle, request):  # type: ignore[override]
        self._count("validate")
        self.requests.append(request)
        torch.rand(3)  # a sampler drawing from the global generator
        result = ValidationResult(step=request.step)
        g = torch.Generator().manual_seed(request.seed)
        x = torch.randn(1, 3, request.num_frames, request.height // 4, request.width // 4, generator=g)
        for sigma in torch.linspace(1.0, 0.0, request.num_inference_steps + 1)[:-1]:
            x = x - bundle.denoiser(x, sigma.view(1), toy_prompt_vector(request.prompt)[None]) / request.num_inference_steps
        frames = ((x[0].permute(1, 2, 3, 0).clamp(-1, 1) + 1) / 2).repeat_interleave(4, 1).repeat_interleave(4, 2)
        result.frames[request.key] = frames.numpy()
        return result


def _config(tmp_path: Path, host: PluginHost, validation: dict[str, Any] | None = None, **train_opts: Any):
    raw = toy_config(tmp_path, **train_opts)
    raw["validation"].update(validation or {})
    return resolve_config(raw, host, base_dir=tmp_path)


@pytest.fixture
def toy(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    family = FrameToy()
    host = PluginHost.build([], extra={"toy": family})
    return tmp_path, family, host


# -- schedule ---------------------------------------------------------------


def test_validation_schedule_is_a_pure_function_of_the_step():
    v = ValidationSection(validation_step_interval=3)
    assert [s for s in range(0, 11) if validation_due(v, s, 10)] == [3, 6, 9, 10]
    v = ValidationSection(validation_step_interval=0, validation_on_startup=True)
    assert [s for s in range(0, 11) if validation_due(v, s, 10)] == [0, 10]
    v = ValidationSection(validation_step_interval=2, validation_on_startup=True, validation_disable=True)
    assert not any(validation_due(v, s, 10) for s in range(0, 11))


def test_the_guides_disable_benchmark_false_renders_the_baseline():
    assert validation_due(ValidationSection(validation_prompt="x", disable_benchmark=False), 0, 10)
    assert not validation_due(ValidationSection(validation_prompt="x", disable_benchmark=True), 0, 10)
    assert not validation_due(ValidationSection(validation_prompt="x"), 0, 10)


def test_eval_schedule_has_its_own_interval():
    e = EvaluationSection(eval_steps_interval=4, eval_split=0.5)
    assert [s for s in range(0, 11) if eval_due(e, s, 10)] == [4, 8, 10]
    assert not any(eval_due(EvaluationSection(), s, 10) for s in range(11))


# -- prompts ----------------------------------------------------------------


def test_round_prompts_gather_main_user_library_and_builtin(tmp_path):
    library = tmp_path / "lib.json"
    library.write_text(json.dumps({"anime/<token>": "an anime clip", "just token": "a clip"}))
    v = ValidationSection(validation_prompt="main prompt", user_prompt_library=library, validation_prompt_library=True)
    prompts = round_prompts(v)
    assert list(prompts)[:3] == ["main", "anime/<token>", "just token"]
    assert set(BUILTIN_PROMPTS) <= set(prompts)
    stems = file_stems(["main", "anime/<token>", "anime_<token>", "contact-sheet", "Main"])
    assert stems["anime/<token>"] == "anime_token"
    assert len(set(s.lower() for s in stems.values())) == 5, "distinct on case-insensitive file systems"
    assert stems["contact-sheet"] != "contact-sheet", "the contact sheet's name is reserved"


def test_user_prompt_library_is_checked_when_the_config_loads(tmp_path):
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text('["a prompt"]')
    (tmp_path / "ok.json").write_text('{"cat": "a cat"}')
    for name, message in [("missing.json", "no such file"), ("bad.json", "invalid JSON"), ("list.json", "JSON object")]:
        with pytest.raises(ConfigError, match=message):
            resolve_config({"model_family": "toy", "user_prompt_library": name}, host, base_dir=tmp_path)
    config = resolve_config({"model_family": "toy", "user_prompt_library": "ok.json"}, host, base_dir=tmp_path)
    assert config.validation.user_prompt_library == tmp_path / "ok.json", "relative to the config's folder"


def test_validation_options_are_checked():
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        ValidationSection(validation_resolution="832x480,big")
    with pytest.raises(ValueError, match="above validation_guidance_skip_layers_start"):
        ValidationSection(validation_guidance_skip_layers=[1], validation_guidance_skip_layers_start=0.5,
                          validation_guidance_skip_layers_stop=0.5)
    assert ValidationSection(validation_resolution=["64x32", "32x64", "64x32"]).sizes() == [(64, 32), (32, 64)]
    with pytest.raises(ValueError, match="set eval_split"):
        EvaluationSection(eval_steps_interval=5)


# -- media ------------------------------------------------------------------


def test_video_decodes_to_its_frames_and_size(tmp_path):
    frames = np.random.default_rng(0).random((9, 30, 44, 3)).astype(np.float32)
    path = write_video(frames, tmp_path / "clip.mp4", fps=8)
    decoded = read_media(path)
    assert decoded.shape == (9, 30, 44, 3) and decoded.dtype == np.uint8
    odd = read_media(write_video(frames[:, :29, :43], tmp_path / "odd.mp4"))
    assert odd.shape == (9, 30, 44, 3), "yuv420p needs even sizes: padded by one edge pixel"


def test_the_same_frames_always_give_the_same_video(tmp_path):
    """Rounds are compared by file: the same frames give the same bytes, whatever the process ran before.

    With x264's macroblock-tree rate control on, a decode on the same thread between writes gave several
    files out of 60, and many more with flush-denormal mode on the thread (torch leaves it set).
    """
    rng = np.random.default_rng(0)
    frames = np.clip(np.cumsum(rng.integers(0, 255, (5, 32, 32, 3)), axis=2) // 20, 0, 255).astype(np.uint8)
    other = write_video(np.zeros((9, 48, 64, 3), np.uint8), tmp_path / "other.mp4")
    files = set()
    try:
        for i in range(60):
            torch.set_flush_denormal(i % 2 == 1)  # both floating-point modes give the same file
            read_media(other)
            files.add(write_video(frames, tmp_path / f"{i}.mp4").read_bytes())
    finally:
        torch.set_flush_denormal(False)
    assert len(files) == 1, f"60 encodes of the same frames gave {len(files)} different files"


def test_colours_survive_the_video_round_trip(tmp_path):
    """rgb24 -> yuv420p (BT.601 limited range) -> H.264 -> rgb24 keeps pure colours and a grey ramp."""
    frames = np.zeros((5, 32, 64, 3), np.uint8)
    frames[:, :8], frames[:, 8:16], frames[:, 16:24] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    frames[:, 24:] = np.linspace(0, 255, 64).round().astype(np.uint8)[None, None, :, None]
    decoded = read_media(write_video(frames, tmp_path / "colours.mp4")).astype(int)
    # Away from the bands' edges, where 4:2:0 chroma blends neighbours.
    for rows in (np.s_[:, 2:6, 8:56], np.s_[:, 10:14, 8:56], np.s_[:, 18:22, 8:56], np.s_[:, 26:30]):
        assert np.abs(decoded[rows] - frames[rows]).max() <= 8, "colour shifted"
    grey = decoded[:, 26:30]
    assert np.abs(grey - grey.mean(axis=-1, keepdims=True)).max() <= 4, "grey stays grey"


def test_contact_sheet_is_a_grid_of_frames_by_prompts(tmp_path):
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 255, (17, 24, 32, 3), dtype=np.uint8) for _ in range(2))
    ta, tb = thumbnails(a, count=5), thumbnails(b, count=5)
    assert len(ta) == 5 and (ta[0] == a[0]).all() and (ta[-1] == a[-1]).all() and (ta[2] == a[8]).all()
    path = contact_sheet([("first", [ta]), ("second", [tb, ta])], tmp_path / "sheet.png")
    sheet = np.asarray(Image.open(path))
    h, w, cols = 24, 32, 5
    one, two = SHEET_PAD + cols * (w + SHEET_PAD), 2 * (SHEET_PAD + cols * (w + SHEET_PAD)) + SHEET_GAP
    assert sheet.shape == (SHEET_PAD + 2 * (SHEET_LABEL + h + SHEET_PAD), max(one, two), 3)
    row2 = SHEET_PAD + SHEET_LABEL + h + SHEET_PAD + SHEET_LABEL

    def cell(y: int, x: int) -> np.ndarray:
        return sheet[y : y + h, x : x + w]

    assert (cell(SHEET_PAD + SHEET_LABEL, SHEET_PAD + 3 * (w + SHEET_PAD)) == ta[3]).all()
    assert (cell(row2, SHEET_PAD) == tb[0]).all()
    second_variant = SHEET_PAD + cols * (w + SHEET_PAD) + SHEET_PAD + SHEET_GAP
    assert (cell(row2, second_variant) == ta[0]).all(), "the second variant sits beside the first"
    big = thumbnails(np.zeros((3, 600, 300, 3), np.uint8), max_side=200)
    assert big.shape == (3, 200, 100, 3)


# -- rounds -----------------------------------------------------------------


def test_round_writes_every_prompt_at_every_size_and_a_contact_sheet(toy):
    folder, family, host = toy
    (folder / "lib.json").write_text(json.dumps({"the/cat": "a cat on a mat"}))
    config = _config(folder, host, {
        "validation_resolution": "32x16,16x32", "user_prompt_library": "lib.json", "validation_num_video_frames": 5,
        "validation_fps": 8,
    })
    bundle = host.load_model(config, torch.device("cpu"))
    result = run_validation(host, bundle, config, 7)
    step_dir = folder / "out" / "validation" / "step-7"
    assert sorted(p.name for p in step_dir.iterdir()) == [
        "contact-sheet.png", "main-16x32.mp4", "main-32x16.mp4", "the_cat-16x32.mp4", "the_cat-32x16.mp4",
    ]
    assert result.contact_sheet == step_dir / "contact-sheet.png"
    assert read_media(result.media["main-32x16"]).shape == (5, 16, 32, 3)
    import av

    with av.open(str(result.media["main-32x16"])) as container:
        assert container.streams.video[0].average_rate == 8
    assert read_media(result.media["the/cat-16x32"]).shape == (5, 32, 16, 3)
    sheet = Image.open(result.contact_sheet)
    assert sheet.height == SHEET_PAD + 2 * (SHEET_LABEL + 16 + SHEET_PAD) + 2 * (SHEET_LABEL + 32 + SHEET_PAD)
    assert [(r.width, r.height) for r in family.requests] == [(32, 16), (32, 16), (16, 32), (16, 32)]


def test_videos_play_at_the_models_own_frame_rate_unless_validation_fps_is_set(toy):
    import av

    folder, _, host = toy

    def rate(validation: dict, **toy_section) -> float:
        raw = toy_config(folder)
        raw["validation"].update({"validation_num_video_frames": 3, **validation})
        raw["toy"] = toy_section
        config = resolve_config(raw, host, base_dir=folder)
        media = run_validation(host, host.load_model(config, torch.device("cpu")), config, 1).media["main"]
        with av.open(str(media)) as container:
            return container.streams.video[0].average_rate

    assert rate({}) == 16, "a family that states no frame rate: 16"
    assert rate({}, toy_fps=24.0) == 24, "a 24 fps model's clips are not slowed down to 16"
    assert rate({"validation_fps": 12}, toy_fps=24.0) == 12, "the option wins"


def test_the_same_seed_renders_the_same_media_every_round(toy):
    folder, _, host = toy
    config = _config(folder, host, {"validation_num_video_frames": 3})
    bundle = host.load_model(config, torch.device("cpu"))
    state = torch.get_rng_state()
    first = read_media(run_validation(host, bundle, config, 1).media["main"])
    assert torch.equal(torch.get_rng_state(), state), "training's random state is untouched"
    torch.randn(100)  # training draws in between do not matter
    assert np.array_equal(read_media(run_validation(host, bundle, config, 2).media["main"]), first)
    other = _config(folder, host, {"validation_num_video_frames": 3, "validation_seed": 7})
    assert not np.array_equal(read_media(run_validation(host, bundle, other, 3).media["main"]), first)


def test_ema_comparison_renders_both_weights_side_by_side(toy):
    folder, family, host = toy
    config = _config(folder, host, {"validation_num_video_frames": 1}, use_ema=True, ema_validation="comparison")
    bundle = host.load_model(config, torch.device("cpu"))
    swaps: list[str] = []

    @contextlib.contextmanager
    def use_ema():
        swaps.append("in")
        with torch.no_grad():
            bundle.denoiser.out.bias += 0.5
        try:
            yield
        finally:
            with torch.no_grad():
                bundle.denoiser.out.bias -= 0.5
            swaps.append("out")

    result = run_validation(host, bundle, config, 5, use_ema=use_ema)
    assert sorted(result.media) == ["main", "main-ema"] and swaps == ["in", "out"]
    trained, ema = read_media(result.media["main"]), read_media(result.media["main-ema"])
    assert not np.array_equal(trained, ema)
    sheet = np.asarray(Image.open(result.contact_sheet))
    assert sheet.shape[1] == 2 * (2 * SHEET_PAD + 16) + SHEET_GAP, "one row, trained | ema"
    x_ema = 2 * SHEET_PAD + 16 + SHEET_PAD + SHEET_GAP
    y = SHEET_PAD + SHEET_LABEL
    assert np.array_equal(sheet[y : y + 16, x_ema : x_ema + 16], ema[0])

    only = _config(folder, host, {"validation_num_video_frames": 1}, use_ema=True, ema_validation="ema_only")
    result = run_validation(host, bundle, only, 6, use_ema=use_ema)
    assert list(result.media) == ["main"] and np.array_equal(read_media(result.media["main"]), ema)
    plain = run_validation(host, bundle, only, 7)  # no EMA weights exist: the trained weights render
    assert np.array_equal(read_media(plain.media["main"]), trained)


def test_a_family_that_writes_its_own_files_still_gets_a_contact_sheet(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    host = PluginHost.build([], extra={"toy": ToyFamily()})  # writes <nickname>.png itself
    config = _config(tmp_path, host, {"validation_num_video_frames": 1})
    bundle = host.load_model(config, torch.device("cpu"))
    result = run_validation(host, bundle, config, 3)
    assert result.media["main"].name == "main.png" and result.contact_sheet.is_file()


def test_skip_layer_guidance_reaches_the_family(toy):
    folder, family, host = toy
    config = _config(folder, host, {"validation_guidance_skip_layers": [1], "validation_guidance_skip_layers_start": 0.0,
                                    "validation_guidance_skip_layers_stop": 1.0})
    bundle = host.load_model(config, torch.device("cpu"))
    run_validation(host, bundle, config, 1)
    slg = family.requests[-1].skip_layer_guidance
    assert (slg.layers, slg.start, slg.stop, slg.scale) == ((1,), 0.0, 1.0, 2.8)
    assert [i for i in range(4) if slg.active(i, 4)] == [0, 1, 2, 3]


def test_a_run_validates_a_baseline_and_can_switch_validation_off(toy):
    folder, family, host = toy
    config = _config(folder, host, {"validation_on_startup": True, "validation_step_interval": 2}, max_train_steps=3)
    train(config, host)
    rounds = [r["step"] for r in read_log(folder / "out") if r["event"] == "validation"]
    assert rounds == [0, 2, 3]
    assert (folder / "out" / "validation" / "step-0" / "contact-sheet.png").is_file()
    off = _config(folder, host, {"validation_disable": True}, max_train_steps=1, output_dir=str(folder / "off"))
    train(off, host)
    assert not (folder / "off" / "validation").exists()


# -- evaluation loss --------------------------------------------------------


def test_hook_eval_loss_is_identical_for_identical_weights(toy):
    folder, family, host = toy
    config = _config(folder, host)
    bundle = host.load_model(config, torch.device("cpu"))
    from tuner.data.prepare import prepare_samples, scan_samples

    samples = prepare_samples(host, bundle, config, scan_samples(config), torch.device("cpu")).samples
    evaluate = EvalLoss(host, bundle, config, samples, torch.device("cpu"))
    first = evaluate()
    torch.randn(10)
    assert evaluate() == first, "fixed noise levels and fixed noise: the same number every time"
    assert family.calls["eval_loss"] == 2 * 2 * 2, "2 samples x 8 levels in chunks of 4, twice"
    raw = toy_config(folder)
    raw["evaluation"] = {"eval_seed": 1}
    reseeded = EvalLoss(host, bundle, resolve_config(raw, host, base_dir=folder), samples, torch.device("cpu"))
    assert reseeded() != first, "eval_seed picks the noise"
    with torch.no_grad():
        bundle.denoiser.out.bias += 0.1
    assert evaluate() != first
    assert eval_sigmas(4) == [0.125, 0.375, 0.625, 0.875]


def test_eval_loss_is_logged_at_its_interval_on_held_out_samples(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=4, num_frames=3, width=16, height=16)
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    raw = toy_config(tmp_path, max_train_steps=5)
    raw["evaluation"] = {"eval_steps_interval": 2, "eval_split": 0.25}
    config = resolve_config(raw, host, base_dir=tmp_path)
    train(config, host)
    steps = [r for r in read_log(tmp_path / "out") if r["event"] == "step"]
    assert [r["step"] for r in steps if "eval_loss" in r] == [2, 4, 5]
    train_part, held = split_eval_samples(list(range(4)), config)
    assert len(held) == 1 and held == split_eval_samples(list(range(4)), config)[1], "the same every time"
    assert sorted(train_part + held) == [0, 1, 2, 3]


def test_eval_dataset_id_holds_out_a_whole_dataset_even_below_a_batch(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=4, num_frames=3, width=16, height=16)
    write_synthetic_clips(tmp_path / "held", count=1, num_frames=3, width=16, height=16, start=20)
    (tmp_path / "backend.json").write_text(json.dumps([
        {"id": "train", "dataset_type": "video", "instance_data_dir": "clips"},
        {"id": "eval", "dataset_type": "video", "instance_data_dir": "held"},
    ]))
    family = ToyFamily()
    host = PluginHost.build([], extra={"toy": family})
    raw = toy_config(tmp_path, max_train_steps=3, train_batch_size=2)
    raw["data"] = {"data_backend_config": "backend.json", "cache_dir": "cache", "num_frames": 3, "resolution": 16}
    raw["evaluation"] = {"eval_steps_interval": 2, "eval_dataset_id": "eval"}
    config = resolve_config(raw, host, base_dir=tmp_path)
    train(config, host)
    assert family.calls["encode_batch"] == 5, "the held-out clip is cached too"
    steps = [r for r in read_log(tmp_path / "out") if r["event"] == "step"]
    assert [r["step"] for r in steps if "eval_loss" in r] == [2, 3]

    from tuner.data.prepare import prepare_samples, scan_samples

    bundle = host.load_model(config, torch.device("cpu"))
    data = prepare_samples(host, bundle, config, scan_samples(config), torch.device("cpu"))
    kept, held = split_eval_samples(data.samples, config)
    assert [s.dataset for s in held] == ["eval"], "one clip, fewer than a batch of 2, and not pruned"
    trained = data.only(kept)
    assert {trained.samples[i].dataset for b in trained.buckets for i in b.members} == {"train"}
    data.close()

    raw["evaluation"]["eval_dataset_id"] = "evl"
    raw["train"]["output_dir"] = str(tmp_path / "out-typo")  # "out" holds the first run's checkpoints
    with pytest.raises(DataError, match=r"eval_dataset_id 'evl' names no enabled dataset \(did you mean 'eval'\?\)"):
        train(resolve_config(raw, host, base_dir=tmp_path), host)
    with pytest.raises(ValueError, match="either eval_split or eval_dataset_id"):
        EvaluationSection(eval_steps_interval=2, eval_split=0.5, eval_dataset_id="eval")


def test_eval_loss_needs_a_family_that_can(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=4, num_frames=3, width=16, height=16)

    class NoEval(ToyFamily):
        eval_loss = None  # type: ignore[assignment]

    host = PluginHost.build([], extra={"toy": NoEval()})
    raw = toy_config(tmp_path, max_train_steps=2)
    raw["evaluation"] = {"eval_steps_interval": 1, "eval_split": 0.25}
    with pytest.raises(PluginError, match="no eval_loss hook"):
        train(resolve_config(raw, host, base_dir=tmp_path), host)


def test_a_run_with_ema_renders_the_comparison_through_the_trainer(toy):
    folder, family, host = toy
    config = _config(folder, host, {"validation_num_video_frames": 1}, max_train_steps=2, use_ema=True,
                     ema_validation="comparison", ema_decay=0.5)
    train(config, host)
    final = folder / "out" / "validation" / "step-2"
    assert sorted(p.name for p in final.iterdir()) == ["contact-sheet.png", "main-ema.png", "main.png"]
    assert not np.array_equal(read_media(final / "main.png"), read_media(final / "main-ema.png"))


def test_validation_does_not_change_training(toy):
    from safetensors.torch import load_file

    folder, family, host = toy
    adapters = []
    for name, validation in [("with", {"validation_step_interval": 1}), ("without", {"validation_disable": True})]:
        config = _config(folder, host, {"validation_num_video_frames": 1, **validation}, max_train_steps=3,
                         lora_dropout=0.2, output_dir=str(folder / name))
        adapters.append(load_file(train(config, host)["adapter"]))
    assert family.calls["validate"] == 3
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0]), "the same weights either way"

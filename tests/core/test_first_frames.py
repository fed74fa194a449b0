"""Validation first frames for image-conditioned models (``ModelBundle.image_conditioned``), on the toy family."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_validation import FrameToy, _config

from tuner.config import resolve_config
from tuner.data.synthetic import write_synthetic_clips
from tuner.errors import ConfigError
from tuner.media import SHEET_PAD
from tuner.plugins import PluginHost
from tuner.testing.toy import ToyFamily, toy_config
from tuner.validate.first_frames import load_first_frames, prompt_images
from tuner.validate.rounds import check_validation, run_validation
from tuner.validate.settings import read_prompt_images, read_prompt_library


@pytest.fixture
def toy(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    family = FrameToy()
    return tmp_path, family, PluginHost.build([], extra={"toy": family})


def test_prompt_library_entries_may_carry_their_first_and_last_frames(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "z.png")
    lib = tmp_path / "lib.json"
    lib.write_text(json.dumps({"plain": "a cat", "framed": {"prompt": "a dog", "image": "a.png", "last_image": "z.png"}}))
    assert read_prompt_library(lib) == {"plain": "a cat", "framed": "a dog"}
    assert read_prompt_images(lib) == {"framed": [tmp_path / "a.png", tmp_path / "z.png"]}
    for entry, message in [
        ({"prompt": "x", "image": "missing.png"}, "no file at"),
        ({"prompt": "x", "picture": "a.png"}, "unknown key 'picture'"),
        ({"prompt": "x", "last_image": "a.png"}, "no image"),
        ({"image": "a.png"}, "non-empty prompt"),
    ]:
        lib.write_text(json.dumps({"bad": entry}))
        with pytest.raises(ValueError, match=message):
            read_prompt_library(lib)


def test_held_out_dataset_serves_the_evaluation_loss_or_validation_first_frames(tmp_path):
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    raw = toy_config(tmp_path)
    with pytest.raises(ConfigError, match="for nothing.*validation_using_datasets"):
        resolve_config({**raw, "eval_dataset_id": "x"}, host, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="name it with eval_dataset_id"):
        resolve_config({**raw, "validation_using_datasets": True}, host, base_dir=tmp_path)
    config = resolve_config({**raw, "eval_dataset_id": "x", "validation_using_datasets": True}, host, base_dir=tmp_path)
    assert config.validation.validation_using_datasets


def test_dataset_files_give_first_frames_in_turn_after_the_prompts_own(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    (tmp_path / "firsts").mkdir()
    for name in ("b", "a", "c"):
        Image.new("RGB", (16, 16)).save(tmp_path / "firsts" / f"{name}.png")
        (tmp_path / "firsts" / f"{name}.txt").write_text("a caption")
    Image.new("RGB", (16, 16)).save(tmp_path / "own.png")
    backend = [
        {"id": "clips", "dataset_type": "video", "instance_data_dir": "clips"},
        {"id": "firsts", "dataset_type": "image", "instance_data_dir": "firsts"},
    ]
    (tmp_path / "backend.json").write_text(json.dumps(backend))
    (tmp_path / "lib.json").write_text(json.dumps({"p1": "one", "own": {"prompt": "two", "image": "own.png"}, "p3": "x"}))
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    raw = toy_config(tmp_path)
    del raw["data"]["instance_data_dir"]
    raw["data"]["data_backend_config"] = "backend.json"
    raw["validation"].update(user_prompt_library="lib.json", validation_using_datasets=True)
    config = resolve_config({**raw, "eval_dataset_id": "firsts"}, host, base_dir=tmp_path)
    firsts = tmp_path / "firsts"
    assert prompt_images(config) == {
        "own": [tmp_path / "own.png"], "main": [firsts / "a.png"], "p1": [firsts / "b.png"], "p3": [firsts / "c.png"],
    }  # fmt: skip


def test_first_frames_cover_the_size_without_stretching_and_keep_a_clips_last_frame(tmp_path):
    from tuner.media import write_video

    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 10:30] = 255  # the centre half is white
    Image.fromarray(img).save(tmp_path / "wide.png")
    frames = load_first_frames([tmp_path / "wide.png"], 16, 16)
    assert frames.shape == (1, 16, 16, 3) and frames.min() > 200, "centre-cropped, not squeezed"
    clip = np.zeros((5, 16, 16, 3), np.uint8)
    clip[-1] = 255
    write_video(clip, tmp_path / "clip.mp4")
    first, last = load_first_frames([tmp_path / "clip.mp4"], 16, 16)
    assert first.mean() < 30 and last.mean() > 220


def test_image_conditioned_model_gets_its_frames_and_shows_them_on_the_contact_sheet(toy):
    folder, family, host = toy
    Image.new("RGB", (32, 32), (255, 0, 0)).save(folder / "red.png")
    config = _config(folder, host, {"validation_image": str(folder / "red.png"), "validation_num_video_frames": 3})
    bundle = host.load_model(config, torch.device("cpu"))
    bundle.image_conditioned = True
    check_validation(host, bundle, config)
    result = run_validation(host, bundle, config, 1)
    frames = family.requests[-1].conditioning_frames
    assert frames.shape == (1, 16, 16, 3) and (frames[..., 0] == 255).all() and (frames[..., 1] == 0).all()
    sheet = np.asarray(Image.open(result.contact_sheet))
    assert (sheet[SHEET_PAD + 14 + 2, SHEET_PAD + 2] == [255, 0, 0]).all(), "the first frame opens the row"

    unset = _config(folder, host, {"validation_image": None})
    with pytest.raises(ConfigError, match="validation_image.*validation_using_datasets"):
        check_validation(host, bundle, unset)
    bundle.image_conditioned = False
    with pytest.raises(ConfigError, match="validation_image gives image-to-video models"):
        check_validation(host, bundle, config)


def test_validation_image_serves_every_prompt_that_names_none(tmp_path):
    """The guide's plain string library beside one validation_image: each prompt starts from that image."""
    Image.new("RGB", (16, 16)).save(tmp_path / "one.png")
    Image.new("RGB", (16, 16)).save(tmp_path / "own.png")
    (tmp_path / "lib.json").write_text(json.dumps({"a": "one", "b": "two", "own": {"prompt": "x", "image": "own.png"}}))
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    raw = toy_config(tmp_path)
    raw["validation"].update(user_prompt_library="lib.json", validation_image="one.png", validation_prompt=None)
    config = resolve_config(raw, host, base_dir=tmp_path)
    one = tmp_path / "one.png"
    assert prompt_images(config) == {"a": [one], "b": [one], "own": [tmp_path / "own.png"]}

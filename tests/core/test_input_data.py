"""Data a user's disk really holds: link loops, unreadable folders, images with a video name,
sideways phone clips, captions longer than the model reads."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from data_setup import configure, prepared, video

from tuner import hookimpl
from tuner.data.frames import decode_sample
from tuner.data.local import find_media
from tuner.data.prepare import scan_samples
from tuner.data.probe import ProbeError, probe_media
from tuner.data.sizing import Geometry
from tuner.data.synthetic import render_clip, write_sideways_clip, write_synthetic_clips, write_synthetic_image
from tuner.plugins import PluginHost
from tuner.testing.toy import ToyFamily


@pytest.fixture
def clips(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=3, num_frames=5, width=24, height=16)
    return tmp_path


def test_a_link_loop_is_followed_once_and_noted(clips, capsys):
    (clips / "clips" / "sub").mkdir()
    write_synthetic_clips(clips / "clips" / "sub", count=1, num_frames=5, width=24, height=16, prefix="deep")
    os.symlink("..", clips / "clips" / "sub" / "up")  # a loop: clips/sub/up/sub/up/...
    os.symlink(clips / "clips" / "sub", clips / "clips" / "again")  # a second name for one folder
    scan = scan_samples(configure(clips, [video("a", "clips")]))
    names = sorted(f.path.name for f in scan.datasets[0].files)
    assert names == ["clip_000.mp4", "clip_001.mp4", "clip_002.mp4", "deep_000.mp4"], "each real file once"
    assert scan.datasets[0].found == 4
    err = capsys.readouterr().err
    assert "clips/sub/up leads back to" in err and "clips/again leads back to" in err
    assert "a folder already scanned (a link loop or a second link)" in err


def test_an_unreadable_subfolder_is_reported_like_an_unreadable_file(clips, monkeypatch):
    (clips / "clips" / "private").mkdir()
    write_synthetic_clips(clips / "clips" / "private", count=1, num_frames=5, width=24, height=16, prefix="p")
    real = os.scandir

    def scandir(path="."):
        # Root reads any folder whatever its mode: the refusal is simulated where the scan lists it.
        if os.fspath(path).endswith("private"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    scan = scan_samples(configure(clips, [video("a", "clips")]))
    assert len(scan.datasets[0].files) == 3, "the readable files still train"
    skipped = {s.path.name: s.reason for s in scan.report.skipped}
    assert skipped == {"private": "unreadable folder: Permission denied"}


def test_find_media_lists_an_unreadable_root_too(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "scandir", lambda path=".": (_ for _ in ()).throw(PermissionError(13, "Permission denied", path)))
    listing = find_media(tmp_path)
    assert listing.files == [] and listing.unreadable == [(tmp_path, "unreadable folder: Permission denied")]


@pytest.mark.parametrize("fmt, kind", [("PNG", "PNG"), ("JPEG", "JPEG"), ("WEBP", "WEBP")])
def test_an_image_named_like_a_video_is_not_a_video(tmp_path, fmt, kind):
    path = write_synthetic_image(tmp_path / "x.png", 24, 16)
    path = path.rename(tmp_path / "x.mp4")
    from PIL import Image

    Image.open(path).save(path, format=fmt)
    with pytest.raises(ProbeError, match=f"not a video: the file holds a {kind} image"):
        probe_media(path)


def test_an_image_named_mp4_in_a_scan_says_not_a_video_not_too_short(clips):
    png = write_synthetic_image(clips / "clips" / "still.png", 24, 16)
    png.rename(png.with_suffix(".mp4"))
    scan = scan_samples(configure(clips, [video("a", "clips", video={"num_frames": 5})]))
    reasons = {s.path.name: s.reason for s in scan.report.skipped}
    assert reasons["still.mp4"].startswith("not a video")


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_a_sideways_phone_clip_decodes_upright(tmp_path, degrees):
    upright = render_clip("square", "red", "white", "down", 5, 32, 48)  # portrait: 32 wide, 48 high
    path = write_sideways_clip(upright, tmp_path / "phone.mp4", degrees)
    info = probe_media(path)
    assert (info.width, info.height) == (32, 48)
    frames = decode_sample(path, Geometry(5, 32, 48, (32, 48), (0, 0), 32 / 48))
    assert frames.shape == (5, 48, 32, 3)
    error = np.abs(frames.astype(int) - upright.astype(int)).mean()
    turned = np.abs(np.rot90(frames, 2, axes=(1, 2)).astype(int) - upright.astype(int)).mean()
    assert error < 6 < turned, (error, turned)  # codec noise only, far from a turned picture


def test_a_sideways_clip_is_bucketed_by_its_upright_size(tmp_path):
    (tmp_path / "clips").mkdir()
    write_sideways_clip(render_clip("circle", "blue", "black", "left", 5, 16, 32), tmp_path / "clips" / "p.mp4", -90)
    (tmp_path / "clips" / "p.txt").write_text("a portrait clip")
    scan = scan_samples(configure(tmp_path, [video("a", "clips", video={"num_frames": 5})]))
    info = scan.datasets[0].files[0].info
    assert (info.width, info.height) == (16, 32)


class CuttingToy(ToyFamily):
    """The toy family, with a tokenizer that counts words and keeps 4."""

    @hookimpl
    def load_model(self, config, device):
        bundle = ToyFamily.load_model(self, config, device)
        bundle.count_prompt_tokens = lambda prompts: [len(p.split()) for p in prompts]
        bundle.max_prompt_tokens = 4
        return bundle


def test_a_caption_longer_than_the_model_reads_is_reported_once(clips, capsys):
    (clips / "clips" / "clip_001.txt").write_text("one two three four five six seven")
    config = configure(clips, [video("a", "clips")])
    host = PluginHost.build([], extra={"toy": CuttingToy()})
    scan = scan_samples(config)
    bundle = host.load_model(config, torch.device("cpu"))
    from tuner.data.prepare import prepare_samples

    prepare_samples(host, bundle, config, scan, torch.device("cpu")).close()
    err = capsys.readouterr().err
    # The synthetic captions have 9 words: all three are cut; the example names a file and its count.
    assert err.count("longer than the 4 tokens the model reads") == 1
    assert "3 caption(s)" in err and "truncated to 4 tokens" in err and "clip_001.mp4: 7 tokens" in err
    scan = scan_samples(config)
    prepare_samples(host, bundle, config, scan, torch.device("cpu")).close()
    assert "longer than" not in capsys.readouterr().err, "cached captions are not reported again"


def test_no_report_when_the_family_does_not_cut(clips, capsys):
    data, _ = prepared(configure(clips, [video("a", "clips")]))
    data.close()
    assert "longer than" not in capsys.readouterr().err

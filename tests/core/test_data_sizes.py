"""Sizes and frames: resolution types, crops, minimum and maximum sizes, frame counts, aspect buckets."""

from __future__ import annotations

import pytest
from data_setup import configure, plan, video, wan_like

from tuner.data.layout import load_layout
from tuner.data.probe import MediaInfo
from tuner.data.sizing import fit, frames_for, target_size, valid_frames
from tuner.data.synthetic import write_synthetic_clips, write_synthetic_image


@pytest.fixture
def clips(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=3, num_frames=5, width=24, height=16)
    return tmp_path


def test_resolution_types_size_a_sample():
    assert target_size(16 / 9, 480, "pixel", 16) == (848, 480)  # short side 480
    w, h = target_size(16 / 9, 480, "pixel_area", 16)
    assert abs(w * h - 480 * 480) / 480**2 < 0.03 and (w, h) == (640, 368)
    assert target_size(1.0, 0.25, "area", 8) == (504, 504)  # 0.25 megapixels


def spec_of(tmp_path, **extra):
    write_synthetic_clips(tmp_path / "one", count=1, num_frames=3, width=16, height=16)
    return load_layout(configure(tmp_path, [video("a", "one", **extra)])).datasets[0]


def test_minimum_image_size_skips_small_files(tmp_path):
    spec = spec_of(tmp_path, resolution=32, resolution_type="pixel", minimum_image_size=100)
    assert "too small: 160x90 is 90 (pixel), below minimum_image_size 100" == fit(
        spec, MediaInfo(160, 90, 1, True), 1, 8, 2, 0
    )
    assert fit(spec, MediaInfo(200, 100, 1, True), 1, 8, 2, 0).shape == (1, 32, 64)


def test_crop_aspect_square_closest_random_and_crop_style(tmp_path):
    info = MediaInfo(400, 200, 1, True)
    square = fit(spec_of(tmp_path, crop=True, resolution=64, resolution_type="pixel"), info, 1, 8, 2, 0)
    # Cropping happens at the file's own scale: a 64x64 window from the middle of 400x200.
    assert (square.width, square.height, square.resize, square.crop) == (64, 64, (400, 200), (168, 68))
    corner = fit(
        spec_of(tmp_path, crop=True, crop_style="corner", resolution=64, resolution_type="pixel"), info, 1, 8, 2, 0
    )
    assert corner.crop == (0, 0)
    closest = fit(
        spec_of(
            tmp_path,
            crop=True,
            crop_aspect="closest",
            crop_aspect_buckets=[1.0, 1.5, 3.0],
            resolution=64,
            resolution_type="pixel",
        ),
        info,
        1,
        8,
        2,
        0,
    )
    assert (closest.width, closest.height) == (96, 64)  # 1.5 is nearer 2.0 than 3.0 on a log scale
    rnd = spec_of(
        tmp_path, crop=True, crop_aspect="random", crop_style="random", resolution=64, resolution_type="pixel"
    )
    draws = {(g.width, g.height, g.crop) for g in (fit(rnd, info, 1, 8, 2, seed) for seed in range(12))}
    assert len(draws) > 3, "random aspect and position"
    assert fit(rnd, info, 1, 8, 2, 5) == fit(rnd, info, 1, 8, 2, 5), "a file keeps its draw"


def test_maximum_image_size_downsamples_before_the_crop(tmp_path):
    info = MediaInfo(2000, 1000, 1, True)
    spec = spec_of(
        tmp_path, crop=True, resolution=256, resolution_type="pixel", maximum_image_size=900, target_downsample_size=512
    )
    g = fit(spec, info, 1, 16, 2, 0)
    assert g.resize == (1024, 512) and (g.width, g.height) == (256, 256)
    plain = fit(spec_of(tmp_path, crop=True, resolution=256, resolution_type="pixel"), info, 1, 16, 2, 0)
    assert plain.resize == (2000, 1000)


def test_frame_counts_follow_the_vae_stride_and_the_video_block(tmp_path):
    assert [valid_frames(n, 4) for n in (75, 77, 17, 16, 1)] == [73, 77, 17, 13, 1]
    clip = lambda n: MediaInfo(64, 64, n, False)  # noqa: E731
    spec = spec_of(tmp_path, video={"num_frames": 75})
    assert frames_for(spec, clip(80), 4) == 73
    assert frames_for(spec, clip(74), 4) == "too short: 74 frames, fewer than min_frames 75"
    spec = spec_of(tmp_path, video={"num_frames": 33, "min_frames": 9, "max_frames": 100})
    assert frames_for(spec, clip(20), 4) == 17, "between min_frames and num_frames: the clip's own length"
    assert frames_for(spec, clip(120), 4) == "too long: 120 frames, more than max_frames 100"
    spec = spec_of(tmp_path, video={"bucket_strategy": "resolution_frames", "frame_interval": 25})
    assert [frames_for(spec, clip(n), 1) for n in (60, 99, 100)] == [50, 75, 100]
    assert [frames_for(spec, clip(n), 4) for n in (60, 100)] == [49, 97]
    assert frames_for(spec, MediaInfo(64, 64, 1, True), 4) == 1, "images are 1-frame clips"


def test_an_invalid_frame_count_is_announced_once_with_the_count_used(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=16, width=32, height=32)
    config = configure(tmp_path, [video("a", "clips", video={"num_frames": 16})])
    scan, samples, _ = plan(config, wan_like())
    notice = [n for n in scan.report.notices if "num_frames" in n]
    assert notice == [
        "dataset 'a' video.num_frames = 16 does not fit the wan VAE, which needs 4k+1 frames: training on 13 frames"
        " (set 13 or 17 to silence this)"
    ]
    assert {s.geometry.frames for s in samples} == {13}


def test_resolution_frames_puts_an_832x480_75_frame_clip_in_its_own_bucket(tmp_path):
    write_synthetic_clips(tmp_path / "v", count=1, num_frames=75, width=208, height=120, prefix="long")
    write_synthetic_clips(tmp_path / "v", count=2, num_frames=33, width=208, height=120, prefix="short")
    write_synthetic_clips(tmp_path / "v", count=1, num_frames=33, width=120, height=120, prefix="square")
    config = configure(
        tmp_path,
        [video("a", "v", resolution=480, resolution_type="pixel", video={"bucket_strategy": "resolution_frames"})],
    )
    _, samples, buckets = plan(config)
    assert {b.label: len(b.members) for b in buckets} == {"832x480@75": 1, "832x480@33": 2, "480x480@33": 1}
    long = next(b for b in buckets if b.label == "832x480@75")
    assert samples[long.members[0]].source.name == "long_000.mp4"
    _, _, wan = plan(config, wan_like())
    assert {b.label for b in wan} == {"832x480@73", "832x480@33", "480x480@33"}


def test_aspect_ratio_strategy_groups_by_rounded_aspect(tmp_path):
    write_synthetic_clips(tmp_path / "v", count=1, num_frames=3, width=176, height=100, prefix="a")  # 1.76
    write_synthetic_clips(tmp_path / "v", count=1, num_frames=3, width=178, height=100, prefix="b")  # 1.78
    for rounding, count in [(2, 2), (1, 1)]:
        config = configure(
            tmp_path, [video("a", "v", resolution=480, video={"num_frames": 3})], aspect_bucket_rounding=rounding
        )
        _, samples, buckets = plan(config)
        assert len(buckets) == count
        assert all(len({samples[i].geometry.shape for i in b.members}) == 1 for b in buckets)


def test_images_in_a_video_dataset_train_as_one_frame_clips(clips):
    write_synthetic_image(clips / "clips" / "still.png", 24, 16)
    _, samples, buckets = plan(configure(clips, [video("a", "clips", video={"num_frames": 5})]))
    assert {b.label: len(b.members) for b in buckets} == {"20x13@1": 1, "20x13@5": 3}

"""Real clips: frame rates (resampled to the model's clock from timestamps), windows of long clips, bad timing.

Every clip here is written with PyAV and each frame carries the time it is shown
(`write_timed_clip`: a binary millisecond code, read back by `read_clock`, and a
bar moving at 40 pixels a second), so the tests read what the decoder really
took, not what the planner meant to take.
"""

from __future__ import annotations

import json
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from data_setup import prepared

from tuner.config import resolve_config
from tuner.data.buckets import plan_samples
from tuner.data.frames import decode_sample
from tuner.data.prepare import scan_samples
from tuner.data.synthetic import read_clock, write_timed_clip
from tuner.errors import DataError
from tuner.plugins import PluginHost
from tuner.testing.toy import ToyFamily, toy_config
from tuner.types.bundle import ModelBundle

GRID = 16.0  # the model's frame rate in these tests (Wan's)


def wan_like(fps: float | None = GRID) -> ModelBundle:
    """What plan_samples reads of a bundle: Wan's frame rule (4k+1), strides and rate."""
    return ModelBundle("wan", torch.nn.Identity(), [], temporal_compression=4, spatial_multiple=16, frame_rate=fps)


def configure(folder: Path, datasets: list[dict], toy: dict | None = None):
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    raw = toy_config(folder)
    raw["toy"] = toy or {}
    (folder / "backend.json").write_text(json.dumps(datasets))
    raw["data"] = {"data_backend_config": "backend.json", "cache_dir": "cache", "num_frames": 17, "resolution": 32}
    return resolve_config(raw, host, folder)


def video(folder: str, id_: str = "v", **options) -> dict:
    return {"id": id_, "dataset_type": "video", "instance_data_dir": folder, "caption_strategy": "filename",
            "crop": True, "crop_aspect": "preserve", "video": options}


def timed(folder: Path, name: str, times: np.ndarray, fps: float) -> Path:
    return write_timed_clip(folder / name, times, width=128, height=16, fps=fps)


def planned(config, bundle=None):
    scan = scan_samples(config)
    return scan, plan_samples(scan, bundle or wan_like(), config)


def shown_at(sample) -> np.ndarray:
    """The times the frames of a planned sample carry, decoded at the clip's own size (the clock stays legible)."""
    g = replace(sample.geometry, width=128, height=16, resize=(128, 16), crop=(0, 0))
    return np.array([read_clock(frame) for frame in decode_sample(sample.source, g)])


RATES = {"16": 16.0, "24": 24.0, "25": 25.0, "29.97": 30000 / 1001, "30": 30.0, "60": 60.0}


def vfr_times(seconds: float) -> np.ndarray:
    """A phone's variable rate: gaps between 1/60 s and 1/20 s."""
    gaps = np.random.default_rng(7).uniform(1 / 60, 1 / 20, int(seconds * 40))
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    return times[times <= seconds]


@pytest.fixture(scope="module")
def rates(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rates")
    for name, fps in RATES.items():
        timed(folder / "clips", f"at_{name}.mp4", np.arange(int(2.5 * fps)) / fps, fps)
    timed(folder / "clips", "at_vfr.mp4", vfr_times(2.5), 30)
    return folder


def test_every_rate_comes_out_on_the_models_16_fps_clock(rates):
    config = configure(rates, [video("clips", frame_extraction="full")])
    scan, samples = planned(config)
    assert len(samples) == len(RATES) + 1
    for sample in samples:
        times = shown_at(sample)
        grid = np.arange(len(times)) / GRID
        worst = np.abs(times - grid).max()
        assert worst <= 0.5 / GRID + 1e-3, f"{sample.source.name}: a frame {worst:.3f} s off the 16 fps grid"
        assert len(times) >= 33, "2.5 s at 16 fps, trimmed to 4k+1"
    clips = " ".join(scan.report.clips)
    assert "1 clip(s) at 29.97 fps resampled to 16 fps" in clips and "1 clip(s) at 16 fps kept" in clips
    assert "1 clip(s) at 60 fps resampled to 16 fps" in clips


def test_the_same_motion_at_30_and_60_fps_trains_the_same_frames(rates):
    def bar(frames):  # the moving bar's column, per frame
        band = frames[:, 10:, :, 0].astype(np.float32).mean(axis=1)
        return (band * np.arange(band.shape[1])).sum(axis=1) / band.sum(axis=1)

    def frames_of(resample: bool):
        config = configure(rates, [video("clips", num_frames=33, resample_fps=resample)])
        _, samples = planned(config)
        out = {}
        for s in samples:
            if s.source.stem in ("at_30", "at_60"):
                g = replace(s.geometry, width=128, height=16, resize=(128, 16), crop=(0, 0))
                out[s.source.stem] = decode_sample(s.source, g)
        return out

    same = frames_of(True)
    # The picks differ by at most half a 30 fps frame plus half a 60 fps frame (1/40 s: one pixel of motion),
    # and the bar's drawn position is rounded to a pixel: two pixels at most.
    assert np.abs(bar(same["at_30"]) - bar(same["at_60"])).max() <= 2.0
    raw = frames_of(False)  # frame by frame: the 60 fps clip moves half as far in 33 frames
    assert np.abs(bar(raw["at_30"]) - bar(raw["at_60"])).max() > 10


def long_clip(tmp_path: Path, seconds: float = 10.0) -> Path:
    return timed(tmp_path / "long", "long.mp4", np.arange(int(seconds * 30)) / 30, 30)


@pytest.mark.parametrize(
    ("options", "starts"),
    [
        ({"frame_extraction": "head"}, [0]),
        ({"frame_extraction": "chunk"}, list(range(0, 144, 17))),  # 160 frames at 16 fps: 9 back-to-back windows
        ({"frame_extraction": "slide", "frame_stride": 40}, [0, 40, 80, 120]),
        ({"frame_extraction": "uniform", "frame_sample": 5}, [0, 36, 72, 107, 143]),
    ],
)
def test_each_extraction_takes_the_windows_it_names(tmp_path, options, starts):
    long_clip(tmp_path)
    _, samples = planned(configure(tmp_path, [video("long", num_frames=17, **options)]))
    assert [s.geometry.frames for s in samples] == [17] * len(starts)
    got = [shown_at(s) for s in samples]
    assert [round(t[0] * GRID) for t in got] == starts, "each window starts where its definition says"
    for t, start in zip(got, starts):
        assert np.abs(t - (start + np.arange(17)) / GRID).max() <= 0.5 / GRID + 1e-3


def test_full_takes_the_whole_clip_up_to_max_frames_and_target_frames_make_frame_buckets(tmp_path):
    long_clip(tmp_path, 3.0)  # 48 frames at 16 fps
    _, (whole,) = planned(configure(tmp_path, [video("long", frame_extraction="full")]))
    assert whole.geometry.frames == 45, "48 frames trimmed to Wan's 4k+1"
    _, (capped,) = planned(configure(tmp_path, [video("long", frame_extraction="full", max_frames=21)]))
    assert capped.geometry.frames == 21
    _, samples = planned(configure(tmp_path, [video("long", frame_extraction="chunk", target_frames=[1, 21])]))
    lengths = [s.geometry.frames for s in samples]
    assert lengths.count(1) == 48 and lengths.count(21) == 2
    assert {s.geometry.shape[0] for s in samples} == {1, 21}, "one frame bucket per length"


def test_each_window_is_cached_once_and_a_new_extraction_encodes_only_new_windows(tmp_path):
    long_clip(tmp_path, 4.0)  # 64 frames at 16 fps
    def run(**options):
        data, family = prepared(configure(tmp_path, [video("long", num_frames=9, **options)], {"toy_fps": GRID}))
        return len(data.samples), family.calls.get("encode_batch", 0)

    assert run(frame_extraction="chunk") == (7, 7)
    assert run(frame_extraction="chunk") == (7, 0), "cached: nothing encoded again"
    assert run(frame_extraction="slide", frame_stride=18) == (4, 0), "windows at 0, 18, 36, 54 are chunks already"
    assert run(frame_extraction="slide", frame_stride=4) == (14, 12), "all but the windows at 0 and 36 are new"


def test_stills_train_beside_clips_as_one_frame_samples_and_the_report_says_how_they_mix(tmp_path):
    from tuner.data.synthetic import write_synthetic_image

    long_clip(tmp_path, 2.0)
    for i in range(2):
        write_synthetic_image(tmp_path / "stills" / f"still_{i}.png", 32, 32, index=i)
    stills = {"id": "stills", "dataset_type": "image", "instance_data_dir": "stills", "probability": 0.5, "repeats": 1}
    data, _ = prepared(configure(tmp_path, [video("long", num_frames=9, frame_extraction="chunk"), stills],
                                 {"toy_fps": GRID}))
    assert {s.geometry.frames for s in data.samples if s.dataset == "stills"} == {1}
    assert "dataset 'stills': 4 samples per epoch in 1 bucket(s): 32x32@1 x4" in data.report.buckets
    assert data.report.buckets[-1] == (
        "mix: a batch holds one dataset's samples; each next batch's dataset is drawn with chance proportional to its"
        " probability among those with batches left in the epoch: 'v' probability 1 (3 batches), 'stills' probability"
        " 0.5 (4 batches)"
    )


# -- bad input ---------------------------------------------------------------------------------------


def mistimed(folder: Path, name: str, pts: list[int], dts: list[int]) -> Path:
    """An intra-only clip (MJPEG in Matroska) whose timestamps, in ms, are written as given."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("mjpeg", rate=16)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuvj420p"
        packets = []
        for i in range(len(pts)):
            packets += stream.encode(av.VideoFrame.from_ndarray(np.full((16, 32, 3), 20 * i, np.uint8), format="rgb24"))
        packets += stream.encode()
        for packet, p, d in zip(packets, pts, dts):
            packet.time_base = Fraction(1, 1000)
            packet.pts, packet.dts = p, d
            container.mux(packet)
    return path


def skips(config, bundle=None) -> dict[str, str]:
    scan, _ = planned(config, bundle)
    return {s.path.name: s.reason for s in scan.report.skipped}


def test_bad_timing_gets_one_clear_line_each(tmp_path):
    clips = tmp_path / "bad"
    timed(clips, "short.mp4", np.arange(3) / 16, 16)
    timed(clips, "thousand.mp4", np.arange(40) / 1000, 1000)
    timed(clips, "sparse.mp4", np.arange(5) * 2.0, 0.5)
    mistimed(clips, "repeats.mkv", [0, 63, 63, 125, 188], [0, 63, 63, 125, 188])
    mistimed(clips, "backwards.mkv", [0, 125, 63, 188, 250], [-1, 0, 63, 125, 188])
    reasons = skips(configure(tmp_path, [video("bad", num_frames=5)]))
    assert reasons["short.mp4"] == "too short: 3 frames at 16 fps (0.19 s, fewer than min_frames 5)"
    fix = "set video.source_fps to the rate it was filmed at"
    assert reasons["thousand.mp4"] == f"its timestamps say 1000 fps (its header 1000 fps), not a rate footage is filmed at: {fix}"
    assert reasons["sparse.mp4"] == f"its timestamps say 0.5 fps (its header 0.5 fps), not a rate footage is filmed at: {fix}"
    fix = "set video.source_fps to time its frames by their order, or video.resample_fps = false to take them as they are"
    assert reasons["repeats.mkv"] == f"timestamps repeat (two frames at 0.063 s): {fix}"
    assert reasons["backwards.mkv"] == f"timestamps go backwards (frame 2 at 0.063 s): {fix}"
    # Told the rate, they train: source_fps times the frames by their order, and they decode in that order.
    config = configure(tmp_path, [video("bad", num_frames=5, source_fps=16)])
    scan, samples = planned(config)
    assert {s.path.name for s in scan.report.skipped} == {"short.mp4"}
    (backwards,) = [s for s in samples if s.source.name == "backwards.mkv"]
    g = replace(backwards.geometry, width=32, height=16, resize=(32, 16), crop=(0, 0))
    levels = decode_sample(backwards.source, g).reshape(5, -1).mean(axis=1)
    assert (np.diff(levels) > 10).all(), "the frames in the order they were written"


def avi_with_header_rate(folder: Path, name: str, rate: int) -> Path:
    """A 16 fps MJPEG AVI of 20 frames whose header is then made to state ``rate`` fps (0: no rate at all).

    AVI has no per-frame timestamps: players time its frames by the header, as FFmpeg does (falling back to
    25 fps when the header states none).
    """
    import struct

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=16)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuvj420p"
        for i in range(20):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((16, 32, 3), 10 * i, np.uint8), "rgb24")))
        container.mux(stream.encode())
    data = bytearray(path.read_bytes())
    strh, avih = data.find(b"strh"), data.find(b"avih")
    data[strh + 32 : strh + 36] = struct.pack("<I", rate)  # the stream header's dwRate (its dwScale is 1)
    if rate == 0:
        data[avih + 8 : avih + 12] = struct.pack("<I", 0)  # and the main header's microseconds per frame
    path.write_bytes(bytes(data))
    return path


def test_a_header_stating_0_or_1000_fps_gets_one_clear_line(tmp_path):
    avi_with_header_rate(tmp_path / "c", "no_rate.avi", 0)
    avi_with_header_rate(tmp_path / "c", "thousand.avi", 1000)
    scan, _ = planned(configure(tmp_path, [video("c", num_frames=5)]))
    (skip,) = scan.report.skipped
    assert (skip.path.name, skip.reason) == (
        "thousand.avi",
        "its timestamps say 1000 fps (its header 1000 fps), not a rate footage is filmed at: set video.source_fps to"
        " the rate it was filmed at",
    )
    assert "1 clip(s) at 25 fps resampled to 16 fps" in scan.report.clips[0], "no rate: FFmpeg's 25 fps, said aloud"
    scan, samples = planned(configure(tmp_path, [video("c", num_frames=5, source_fps=16)]))
    assert not scan.report.skipped and len(samples) == 2
    assert scan.report.clips[0] == "dataset 'v': 2 clip(s) at 16 fps kept (already 16 fps)"


def test_a_window_longer_than_the_clip_says_so(tmp_path):
    timed(tmp_path / "c", "one_second.mp4", np.arange(30) / 30, 30)
    reasons = skips(configure(tmp_path, [video("c", frame_extraction="chunk", target_frames=[33])]))
    assert reasons == {"one_second.mp4": "too short: 16 frames at 16 fps (1.00 s, fewer than min_frames 33)"}


def test_a_clip_slower_than_the_model_repeats_frames_and_says_so(tmp_path, capsys):
    timed(tmp_path / "c", "timelapse.mp4", np.arange(30) / 10, 10)
    scan, (sample,) = planned(configure(tmp_path, [video("c", num_frames=33)]))
    times = shown_at(sample)
    assert len(set(times.tolist())) < len(times), "some frames come twice"
    assert np.abs(times - np.arange(33) / GRID).max() <= 0.05 + 1e-3, "within half a 10 fps frame of the grid"
    assert "1 clip(s) at 10 fps below 16 fps: resampled to 16 fps by showing frames twice" in capsys.readouterr().err


def test_bad_window_options_are_one_line_errors(tmp_path):
    timed(tmp_path / "c", "a.mp4", np.arange(40) / 16, 16)
    with pytest.raises(DataError, match=r"video.frame_stride: Input should be greater than or equal to 1 \(got 0\)"):
        planned(configure(tmp_path, [video("c", frame_extraction="slide", frame_stride=0)]))
    with pytest.raises(DataError, match=r"frame_stride applies to frame_extraction 'slide' only"):
        planned(configure(tmp_path, [video("c", frame_stride=2)]))
    with pytest.raises(DataError, match=r"target_frames \[1, 32\]: 32 do\(es\) not fit the wan VAE, which needs 4k\+1"
                                        r" frames: use 29 or 33"):
        planned(configure(tmp_path, [video("c", target_frames=[1, 32])]))


# -- random windows: one per epoch, from the run's seed ------------------------------------------------


def test_random_draws_a_fresh_window_each_epoch_from_the_seed_and_caches_them_all_up_front(tmp_path):
    long_clip(tmp_path, 4.0)
    config = configure(tmp_path, [video("long", num_frames=9, frame_extraction="random")], {"toy_fps": GRID})
    data, family = prepared(config)
    (sample,) = data.samples
    assert data.epoch_length == 1 and len(sample.epochs) == 40, "max_train_steps 40: one window per epoch"
    starts = [w.geometry.take[0] for w in sample.epochs]
    assert len(set(starts)) > 20, "windows move from epoch to epoch"
    encoded = family.calls["encode_batch"]
    assert encoded == len({w.latents for w in sample.epochs}), "every distinct window encoded once, before training"
    again, family = prepared(config)
    assert family.calls.get("encode_batch", 0) == 0
    assert [w.latents for w in again.samples[0].epochs] == [w.latents for w in sample.epochs], "a function of the seed"
    first = data.load_micro_batch(0)[0]["latents"]
    second = data.load_micro_batch(1)[0]["latents"]
    assert not torch.equal(first, second), "epoch 1 trains another window"
    raw = toy_config(tmp_path)
    raw["toy"], raw["train"]["seed"] = {"toy_fps": GRID}, 7
    raw["data"] = {"data_backend_config": "backend.json", "cache_dir": "cache", "resolution": 32}
    other = resolve_config(raw, PluginHost.build([], extra={"toy": ToyFamily()}), tmp_path)
    _, (drawn,) = planned(other)
    assert drawn.redraw is not None and drawn.redraw(5).geometry.take != sample.epochs[5].geometry.take


def test_a_run_of_random_windows_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from tuner.train.run import train

    long_clip(tmp_path, 3.0)
    (tmp_path / "backend.json").write_text(json.dumps([video("long", num_frames=5, frame_extraction="random")]))

    def go(name: str, **options):
        raw = toy_config(tmp_path, **options)
        raw["toy"] = {"toy_fps": GRID}
        raw["train"]["output_dir"] = str(tmp_path / name)
        raw["validation"]["validation_prompt"] = None
        raw["data"] = {"data_backend_config": "backend.json", "cache_dir": "cache", "resolution": 32}
        host = PluginHost.build([], extra={"toy": ToyFamily()})
        return train(resolve_config(raw, host, tmp_path), host)

    straight = go("straight", max_train_steps=6, checkpoint_step_interval=3)
    go("resumed", max_train_steps=3, checkpoint_step_interval=3)
    resumed = go("resumed", max_train_steps=6, checkpoint_step_interval=3, resume_from_checkpoint="latest")
    a, b = load_file(straight["adapter"]), load_file(resumed["adapter"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_validation_first_frames_from_a_dataset_clip_follow_its_first_window(tmp_path):
    from tuner.validate.first_frames import first_windows, load_first_frames, prompt_images

    long_clip(tmp_path, 4.0)
    raw = toy_config(tmp_path)
    (tmp_path / "backend.json").write_text(json.dumps([
        video("long", "firsts", num_frames=17, frame_extraction="random"), video("clips", num_frames=3)
    ]))
    timed(tmp_path / "clips", "other.mp4", np.arange(8) / 16, 16)
    raw["data"] = {"data_backend_config": "backend.json", "cache_dir": "cache", "resolution": 32}
    raw["validation"]["validation_using_datasets"] = True
    config = resolve_config({**raw, "eval_dataset_id": "firsts"}, PluginHost.build([], extra={"toy": ToyFamily()}),
                            tmp_path)
    images = prompt_images(config)
    windows = first_windows(config, wan_like(), images)
    first, last = load_first_frames(images["main"], 128, 16, windows)
    _, samples = planned(config)
    (planned_window,) = [s for s in samples if s.dataset == "firsts"]
    start = planned_window.geometry.take[0] / 90000  # write_timed_clip's time base
    assert start > 0.5, "a window drawn inside the clip, not at its start"
    assert read_clock(first) == pytest.approx(start, abs=1e-3), "the clip starts where the training window does"
    assert read_clock(last) == pytest.approx(start + 16 / GRID, abs=1 / 60 + 1e-3), "and ends 16 frames later at 16 fps"

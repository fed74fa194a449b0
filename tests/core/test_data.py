"""The data pipeline: the backend file and its keys, sizing, buckets, batches, bad input.

Most tests stop before any encoder runs (scan, plan, bucket); the ones that need
caches use the toy family, which encodes in microseconds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from guide_examples import GUIDE_BACKEND

from tuner.config import resolve_config
from tuner.data.batches import epoch_batches
from tuner.data.buckets import make_buckets, plan_samples, prune_buckets
from tuner.data.captions import decode_caption
from tuner.data.layout import load_layout
from tuner.data.prepare import prepare_samples, scan_samples
from tuner.data.probe import MediaInfo
from tuner.data.sizing import fit, frames_for, target_size, valid_frames
from tuner.data.synthetic import write_broken_files, write_synthetic_clips, write_synthetic_image
from tuner.errors import ConfigError, DataError
from tuner.plugins import PluginHost
from tuner.testing.toy import ToyFamily, toy_config
from tuner.types.bundle import ModelBundle
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

def wan_like(temporal: int = 4, multiple: int = 16) -> ModelBundle:
    """What plan_samples reads of a bundle: the strides (Wan's by default) and the cache id."""
    return ModelBundle(
        "wan", torch.nn.Identity(), [], temporal_compression=temporal, spatial_multiple=multiple, cache_id="t"
    )


def toy_bundle() -> ModelBundle:
    return wan_like(1, 1)


def configure(folder: Path, backend: list | None = None, train: dict | None = None, **data):
    """A resolved toy config in ``folder``; ``backend`` is written as the backend file."""
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    raw = toy_config(folder, **(train or {}))
    if backend is not None:
        (folder / "backend.json").write_text(json.dumps(backend))
        raw["data"] = {"data_backend_config": "backend.json", "cache_dir": "cache", "num_frames": 5, "resolution": 16}
    raw["data"].update(data)
    return resolve_config(raw, host, folder)


def plan(config, bundle=None):
    scan = scan_samples(config)
    samples = plan_samples(scan, bundle or toy_bundle(), config)
    return scan, samples, make_buckets(samples, scan)


def video(id_: str, folder: str, **extra) -> dict:
    return {"id": id_, "type": "local", "dataset_type": "video", "instance_data_dir": folder, **extra}


def prepared(config):
    family = ToyFamily()
    host = PluginHost.build([], extra={"toy": family})
    scan = scan_samples(config)
    bundle = host.load_model(config, torch.device("cpu"))
    return prepare_samples(host, bundle, config, scan, torch.device("cpu")), family


@pytest.fixture
def clips(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=3, num_frames=5, width=24, height=16)
    return tmp_path


# -- the backend file ------------------------------------------------------------


def test_the_guides_backend_file_loads_unchanged(tmp_path):
    write_synthetic_clips(tmp_path / "datasets" / "disney-black-and-white", count=1, num_frames=5)
    layout = load_layout(configure(tmp_path, GUIDE_BACKEND))
    (spec,) = layout.datasets
    assert (spec.id, spec.kind, spec.num_frames, spec.min_frames, spec.bucket_strategy) == (
        "disney-black-and-white",
        "video",
        75,
        75,
        "aspect_ratio",
    )
    assert spec.vae_cache == tmp_path / "cache/vae/wan/disney-black-and-white"
    assert layout.default_text_cache == tmp_path / "cache/text/wan"
    assert layout.text_write_batch_size == 128
    assert (spec.resolution, spec.resolution_type, spec.minimum_image_size) == (480, "pixel_area", 480)


def test_the_guides_top_level_data_options_land_in_data(tmp_path):
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    flat = {
        "data_backend_config": "config/wan/multidatabackend.json",
        "aspect_bucket_rounding": 2,
        "minimum_image_size": 0,
        "caption_dropout_probability": 0.1,
        "resolution_type": "pixel_area",
        "resolution": 480,
        "vae_batch_size": 1,
        "compress_disk_cache": True,
        "delete_problematic_images": "true",
        "disable_bucket_pruning": True,
    }
    data = resolve_config({"model_family": "toy", **flat}, host, tmp_path).data
    assert data.data_backend_config == tmp_path / "config/wan/multidatabackend.json"
    assert data.delete_problematic_images is True and data.compress_disk_cache and data.disable_bucket_pruning
    assert (data.resolution, data.resolution_type, data.caption_dropout_probability) == (480, "pixel_area", 0.1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"repeat": 1}, "dataset 'v' (entry 1): unknown key 'repeat' (did you mean 'repeats'?)"),
        ({"video": {"num_frame": 5}}, "unknown key 'video.num_frame' (did you mean 'num_frames'?)"),
        ({"type": "aws"}, "dataset 'v' (entry 1): type 'aws' names no data backend; data backends: local, metadata"),
        ({"crop_aspect": "center"}, "or 'random' (got 'center'); where the crop is taken is crop_style (center, corner"),
        ({"resolution_type": "pixels"}, "resolution_type: Input should be 'pixel', 'area' or 'pixel_area'"),
        ({"repeats": -1}, "repeats: Input should be greater than or equal to 0"),
        ({"dataset_type": "image_embeds"}, "dataset_type 'image_embeds' is not supported by tuner yet"),
        (
            {"dataset_type": "image", "video": {"num_frames": 5}},
            "the 'video' block applies to dataset_type 'video' only",
        ),
        ({"video": {"min_frames": 9, "max_frames": 5}}, "min_frames 9 is above max_frames 5"),
        ({"maximum_image_size": 900}, "maximum_image_size and target_downsample_size work together"),
        ({"caption_strategy": "instanceprompt"}, "caption_strategy 'instanceprompt' needs instance_prompt"),
        ({"caption_strategy": "parquet"}, "needs a 'parquet' block"),
        ({"metadata_backend": "parquet"}, "metadata_backend: Input should be 'discovery'"),
        ({"text_embeds": "nope"}, "text_embeds 'nope' is not an enabled text_embeds dataset"),
        ({"probability": 0}, "probability: Input should be greater than 0"),
    ],
)
def test_each_backend_key_is_validated_naming_dataset_and_key(clips, change, message):
    with pytest.raises(DataError) as err:
        load_layout(configure(clips, [{**video("v", "clips"), **change}]))
    assert message in str(err.value)
    assert "backend.json" in str(err.value)


def test_backend_file_level_errors(clips):
    for backend, message in [
        ({"id": "x"}, "the top level must be a list"),
        ([video("a", "clips"), video("a", "clips")], "id 'a' is used twice"),
        ([{"type": "local", "instance_data_dir": "clips"}], "every dataset needs an 'id'"),
        ([{**video("a", "clips"), "disabled": True}], "no enabled video or image dataset"),
        (
            [
                video("a", "clips"),
                {"id": "t1", "dataset_type": "text_embeds"},
                {"id": "t2", "dataset_type": "text_embeds"},
            ],
            "none is 'default': true",
        ),
    ]:
        with pytest.raises(DataError, match=message):
            load_layout(configure(clips, backend))
    with pytest.raises(ConfigError, match="either data_backend_config .* or instance_data_dir"):
        configure(clips, [video("a", "clips")], instance_data_dir="clips")


def test_disabled_and_disable_leave_a_dataset_out(clips):
    write_synthetic_clips(clips / "other", count=1, num_frames=5)
    backend = [video("a", "clips"), video("b", "other", disabled=True), video("c", "other", disable=True)]
    assert [d.id for d in load_layout(configure(clips, backend)).datasets] == ["a"]


def test_backend_file_paths_follow_the_configs_path_rule_and_a_missing_one_names_the_other_folder(
    clips, monkeypatch, tmp_path_factory
):
    """One rule: the backend file's paths are read from the folder the config's paths are read from."""
    from tuner.config_paths import PathRule

    elsewhere = tmp_path_factory.mktemp("cwd")
    write_synthetic_clips(elsewhere / "cwd-clips", count=1, num_frames=5)
    monkeypatch.chdir(elsewhere)
    layout = load_layout(configure(clips, [video("a", "clips")]))
    assert [d.root for d in layout.datasets] == [clips / "clips"]
    config = configure(clips, [video("a", "clips"), video("b", "cwd-clips")])
    with pytest.raises(DataError) as err:
        scan_samples(config)
    assert f"instance_data_dir does not exist or is not a folder: {clips / 'cwd-clips'}" in str(err.value)
    # With the start folder as the base (a flat config.json), the same name is found there.
    config = dataclasses.replace(config, base_dir=elsewhere, path_rule=PathRule(elsewhere, "the start folder", clips))
    (elsewhere / "backend.json").write_text((clips / "backend.json").read_text())
    config.data.data_backend_config = elsewhere / "backend.json"
    with pytest.raises(DataError) as err:
        scan_samples(config)
    assert f"{elsewhere / 'clips'} (relative paths are read from the start folder: {elsewhere};" in str(err.value)
    assert f"{clips / 'clips'} exists: name it relative to {elsewhere}, or absolute)" in str(err.value)


def test_text_embeds_default_and_per_dataset_caches(clips):
    backend = [
        video("a", "clips", cache_dir_vae="latents/a"),
        video("b", "clips", text_embeds="other"),
        {"id": "main", "dataset_type": "text_embeds", "default": True, "cache_dir": "text/main", "write_batch_size": 7},
        {"id": "other", "dataset_type": "text_embeds", "cache_dir": "text/other"},
    ]
    layout = load_layout(configure(clips, backend))
    a, b = layout.datasets
    assert a.vae_cache == clips / "latents/a" and b.vae_cache == clips / "cache/vae/b"
    assert a.text_cache == clips / "text/main" and b.text_cache == clips / "text/other"
    assert layout.default_text_cache == clips / "text/main" and layout.text_write_batch_size == 7


def test_cache_folders_receive_the_entries(clips):
    backend = [
        video("a", "clips", cache_dir_vae="latents/a"),
        {"id": "text", "dataset_type": "text_embeds", "default": True, "cache_dir": "text/main"},
    ]
    data, _ = prepared(configure(clips, backend))
    assert len(list((clips / "latents/a").rglob("*.safetensors"))) == 3
    assert len(list((clips / "text/main").rglob("*.safetensors"))) == 4  # 3 captions and the empty prompt
    assert all(s.latents.is_relative_to(clips / "latents/a") for s in data.samples)


def test_conditioning_image_embeds_has_a_place_and_says_where_the_embeddings_go(clips):
    backend = [
        video("a", "clips", conditioning_image_embeds="cond", cache_dir_conditioning_image_embeds="cache/cond/a"),
        {"id": "cond", "type": "local", "dataset_type": "conditioning_image_embeds", "cache_dir": "cache/cond"},
    ]
    scan = scan_samples(configure(clips, backend))
    assert any("'cond'" in n and "latent entry" in n for n in scan.report.notices)


def test_downsample_options_without_a_crop_are_noted_as_inert(clips):
    inert = scan_samples(configure(clips, [video("a", "clips", maximum_image_size=900, target_downsample_size=512)]))
    assert any("does not crop (crop: false)" in n for n in inert.report.notices)
    cropping = video("a", "clips", crop=True, maximum_image_size=900, target_downsample_size=512)
    assert not any("does not crop" in n for n in scan_samples(configure(clips, [cropping])).report.notices)


# -- captions ------------------------------------------------------------------------


def test_caption_strategies(clips):
    def captions(**extra):
        scan = scan_samples(configure(clips, [video("a", "clips", **extra)]))
        return [f.caption for f in scan.datasets[0].files]

    assert captions()[0] == "a red square moving right on a black background"
    assert captions(caption_strategy="filename")[0] == "clip 000"
    assert set(captions(caption_strategy="instanceprompt", instance_prompt="sks style")) == {"sks style"}


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_metadata_file_captions(clips, kind):
    rows = [("clip_000.mp4", "from the table"), ("clip_001", ""), ("sub/none.mp4", "no such file")]
    if kind == "jsonl":
        text = "\n".join(json.dumps({"file_name": f, "caption": c, "tags": "fallback tags"}) for f, c in rows)
    else:
        text = "file_name,caption,tags\n" + "\n".join(f"{f},{c},fallback tags" for f, c in rows)
    (clips / f"meta.{kind}").write_text(text)
    block = {"path": f"meta.{kind}", "fallback_caption_column": "tags"}
    scan = scan_samples(configure(clips, [video("a", "clips", caption_strategy="parquet", parquet=block)]))
    got = {f.path.name: f.caption for f in scan.datasets[0].files}
    assert got == {"clip_000.mp4": "from the table", "clip_001.mp4": "fallback tags"}
    (skip,) = scan.report.skipped
    assert skip.path.name == "clip_002.mp4" and "no row in meta" in skip.reason


def test_missing_or_empty_caption_files_are_skipped_with_the_rule(clips):
    (clips / "clips" / "clip_001.txt").unlink()
    (clips / "clips" / "clip_002.txt").write_text("  \n")
    scan = scan_samples(configure(clips, [video("a", "clips")]))
    assert [f.path.name for f in scan.datasets[0].files] == ["clip_000.mp4"]
    reasons = {s.path.name: s.reason for s in scan.report.skipped}
    assert "no caption file clip_001.txt; add it, or set caption_strategy to 'filename'" in reasons["clip_001.mp4"]
    assert "empty caption file clip_002.txt" in reasons["clip_002.mp4"]


def test_non_utf8_captions_are_read():
    assert decode_caption("caf\xe9 scene".encode("latin-1")) == ("café scene", "not UTF-8: read as Windows-1252")
    assert decode_caption("caf\xe9".encode("utf-16"))[0] == "café"
    assert decode_caption("\ufeffcafé".encode("utf-8")) == ("café", None)


def test_non_utf8_caption_file_in_a_scan(clips):
    (clips / "clips" / "clip_000.txt").write_bytes("caf\xe9 scene".encode("latin-1"))
    scan = scan_samples(configure(clips, [video("a", "clips")]))
    assert scan.datasets[0].files[0].caption == "café scene"


# -- sizes and frames ---------------------------------------------------------------


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


# -- buckets, repeats, pruning, weights ---------------------------------------------


def test_repeats_multiply_the_epoch(clips):
    lengths = []
    for repeats in (0, 1, 2):
        data, _ = prepared(configure(clips, [video("a", "clips", repeats=repeats)], train={"train_batch_size": 1}))
        lengths.append(data.epoch_length)
    # As the guide's tool counts them: repeats 0 shows each sample once, repeats 1 twice.
    assert lengths == [3, 6, 9]


def test_small_buckets_are_pruned_and_reported_unless_disabled(clips):
    write_synthetic_clips(clips / "clips", count=1, num_frames=5, width=16, height=24, prefix="tall")
    backend = [video("a", "clips")]
    config = configure(clips, backend, train={"train_batch_size": 2})
    data, _ = prepared(config)
    assert [b.label for b in data.buckets] == ["20x13@5"]
    assert data.report.pruned == [
        "dataset 'a' bucket 13x20@5: 1 sample(s) x (1 + repeats 0) = 1, fewer than train_batch_size 2 x"
        " gradient_accumulation_steps 1 = 2"
    ]
    assert data.epoch_length == 1, "3 samples, batch 2: one whole batch (the rest is reshuffled next epoch)"
    kept, _ = prepared(configure(clips, backend, train={"train_batch_size": 2}, disable_bucket_pruning=True))
    assert sorted(b.label for b in kept.buckets) == ["13x20@5", "20x13@5"]
    assert kept.epoch_length == 3
    for index in range(6):
        shapes = {kept.samples[i].geometry.shape for i in kept.batch_indices(index)}
        assert len(kept.batch_indices(index)) == 2 and len(shapes) == 1


def test_accumulation_counts_in_the_pruning_threshold(clips):
    config = configure(clips, [video("a", "clips")], train={"train_batch_size": 2, "gradient_accumulation_steps": 2})
    scan, samples, buckets = plan(config)
    assert prune_buckets(buckets, config, scan.report) == []


def test_a_dataset_left_empty_says_so_and_how_to_fix_it(clips):
    config = configure(clips, [video("a", "clips")], train={"train_batch_size": 4})
    with pytest.raises(DataError) as err:
        prepared(config)
    message = str(err.value)
    assert message.startswith("no samples detected in dataset 'a'")
    assert "3 usable, but no bucket reaches train_batch_size 4 x gradient_accumulation_steps 1 = 4" in message
    assert "set repeats to 1 or more" in message and "disable_bucket_pruning" in message
    with pytest.raises(DataError, match=r"skipped: 3 too short.*relax video min_frames/max_frames"):
        prepared(configure(clips, [video("a", "clips", video={"num_frames": 9})]))


def test_probability_weights_which_dataset_comes_first(clips):
    write_synthetic_clips(clips / "other", count=3, num_frames=5, width=24, height=16)
    backend = [video("a", "clips", repeats=9), video("b", "other", repeats=9, probability=0.1)]
    scan, samples, buckets = plan(configure(clips, backend, train={"train_batch_size": 1}))
    order = epoch_batches(buckets, 1, seed=1, epoch=0)
    first_half = [samples[b[0]].dataset for b in order[: len(order) // 2]]
    assert len(order) == 60 and first_half.count("a") > 24
    assert sorted(samples[b[0]].dataset for b in order) == ["a"] * 30 + ["b"] * 30


def test_batches_are_a_pure_function_of_seed_and_index(clips):
    data, _ = prepared(configure(clips, [video("a", "clips")], train={"train_batch_size": 1}))
    epoch0 = [data.batch_indices(i) for i in range(3)]
    assert sorted(sum(epoch0, [])) == [0, 1, 2]
    again, _ = prepared(configure(clips, [video("a", "clips")], train={"train_batch_size": 1}))
    assert [again.batch_indices(i) for i in range(9)] == [data.batch_indices(i) for i in range(9)]
    assert [data.batch_indices(i) for i in range(3, 6)] != epoch0 or [
        data.batch_indices(i) for i in range(6, 9)
    ] != epoch0
    other, _ = prepared(configure(clips, [video("a", "clips")], train={"train_batch_size": 1, "seed": 7}))
    assert [other.batch_indices(i) for i in range(9)] != [data.batch_indices(i) for i in range(9)]


def test_caption_dropout_uses_the_empty_prompt_reproducibly(clips):
    data, _ = prepared(configure(clips, [video("a", "clips")], caption_dropout_probability=0.5))
    drops = [data.dropped_captions(i, 1)[0] for i in range(40)]
    assert 8 < sum(drops) < 32 and drops == [data.dropped_captions(i, 1)[0] for i in range(40)]
    index = drops.index(True)
    _, prompts = data.load_micro_batch(index)
    from tuner.cache.store import read_entry

    assert torch.equal(prompts[0]["text"], read_entry(data.empty_prompt)["text"])
    _, kept = data.load_micro_batch(drops.index(False))
    assert not torch.equal(kept[0]["text"], prompts[0]["text"])
    data.close()


class _TorchCalls(TorchFunctionMode):
    """Records every torch function called while active (on the thread that entered it)."""

    def __init__(self, seen: list[str]) -> None:
        super().__init__()
        self.seen = seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(getattr(func, "__name__", repr(func)))
        return func(*args, **(kwargs or {}))


class _AtenCalls(TorchDispatchMode):
    """Records every ATen op run while active, including those called from C (safetensors)."""

    def __init__(self, seen: list[str]) -> None:
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def _spying(seen: list[str]):
    import contextlib

    stack = contextlib.ExitStack()
    stack.enter_context(_TorchCalls(seen))
    stack.enter_context(_AtenCalls(seen))
    return stack


def test_the_spies_see_a_torch_op_on_a_helper_thread():
    from concurrent.futures import ThreadPoolExecutor

    seen: list[str] = []

    def work():
        with _spying(seen):
            torch.stack([torch.ones(2), torch.zeros(2)])

    with ThreadPoolExecutor(1) as pool:
        pool.submit(work).result()
    assert "stack" in seen and any("aten.stack" in s or "aten.cat" in s for s in seen)


def test_the_prefetch_thread_calls_no_torch_op(clips, monkeypatch):
    # A torch op on the prefetch thread starts a second OpenMP team that slows every op of the
    # training thread (DESIGN.md, "Rules learned from measurement"): that thread only reads files.
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import tuner.data.batches as batches
    from tuner.cache.store import read_entry

    seen: list[str] = []
    helpers: list[int] = []

    class SpiedPool(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            def spied():
                helpers.append(threading.get_ident())
                with _spying(seen):
                    return fn(*args, **kwargs)

            return super().submit(spied)

    monkeypatch.setattr(batches, "ThreadPoolExecutor", SpiedPool)
    monkeypatch.setattr(batches, "READ_AHEAD_ABOVE_S", 0.0)  # however quick the reads: always read ahead
    config = configure(clips, [video("a", "clips")], train={"train_batch_size": 2}, caption_dropout_probability=0.5)
    data, _ = prepared(config)
    loaded = [data.load_micro_batch(i) for i in range(6)]
    data.close()
    assert len(helpers) >= 5 and threading.get_ident() not in helpers, "batches 1-5 were read ahead on a helper thread"
    assert seen == [], f"torch ops on the prefetch thread: {sorted(set(seen))}"
    # ... and the training thread got the right tensors, stacked.
    for index, (latents, prompts) in enumerate(loaded):
        picked = [data.samples[i] for i in data.batch_indices(index)]
        expected = torch.stack([read_entry(s.latents)["latents"] for s in picked])
        assert torch.equal(latents["latents"], expected) and len(prompts) == 2


def test_quick_reads_stay_on_the_training_thread_and_give_the_same_batches(clips, monkeypatch):
    import tuner.data.batches as batches

    config = configure(clips, [video("a", "clips")], train={"train_batch_size": 2}, caption_dropout_probability=0.5)
    monkeypatch.setattr(batches, "READ_AHEAD_ABOVE_S", float("inf"))
    data, _ = prepared(config)
    inline = [data.load_micro_batch(i) for i in range(5)]
    assert data._pool is None, "no helper thread when reading ahead would not pay"
    monkeypatch.setattr(batches, "READ_AHEAD_ABOVE_S", 0.0)
    data, _ = prepared(config)
    ahead = [data.load_micro_batch(i) for i in range(5)]
    assert data._pool is not None
    data.close()
    for (a_lat, a_txt), (b_lat, b_txt) in zip(inline, ahead):
        assert torch.equal(a_lat["latents"], b_lat["latents"])
        assert all(torch.equal(x["text"], y["text"]) for x, y in zip(a_txt, b_txt))


# -- bad input ------------------------------------------------------------------------


def test_broken_files_are_skipped_and_listed_never_crash(clips, capsys):
    write_broken_files(clips / "clips", num_frames=5, width=24, height=16)
    config = configure(clips, [video("a", "clips")])
    data, family = prepared(config)
    assert sorted(s.source.name for s in data.samples) == ["clip_000.mp4", "clip_001.mp4", "clip_002.mp4"]
    broken = {s.path.name: s.reason for s in data.report.skipped if s.broken}
    assert set(broken) == {"empty.mp4", "garbage.mp4", "truncated_tail.mp4", "truncated_frames.mp4", "truncated.png"}
    assert broken["empty.mp4"] == "empty file (0 bytes)"
    # the header lists more frames than the file holds: found while probing
    assert broken["truncated_frames.mp4"].startswith("truncated: its header lists 5 frames")
    err = capsys.readouterr().err
    assert "scan: 5 file(s) of dataset 'a' skipped" in err
    assert "delete_problematic_images = true moves such files" in err
    report = json.loads((clips / "cache" / "data_report.json").read_text())
    assert {Path(s["path"]).name for s in report["skipped"]} == set(broken)
    # A second start remembers them: nothing is decoded again.
    again, family2 = prepared(config)
    assert "encode_batch" not in family2.calls
    assert {s.path.name for s in again.report.skipped} == set(broken)


def test_delete_problematic_images_moves_them_to_quarantine(clips):
    files = write_broken_files(clips / "clips", num_frames=5, width=24, height=16)
    data, _ = prepared(configure(clips, [video("a", "clips")], delete_problematic_images=True))
    quarantine = clips / "clips" / ".tuner-quarantine"
    for name, path in files.items():
        assert not path.exists() and (quarantine / name).is_file(), name
        assert (quarantine / name).with_suffix(".txt").is_file(), "the caption moves along"
    log = [json.loads(line) for line in (quarantine / "quarantine.jsonl").read_text().splitlines()]
    assert {r["file"] for r in log} == set(files) and all(r["reason"] for r in log)
    again, _ = prepared(configure(clips, [video("a", "clips")], delete_problematic_images=True))
    assert not again.report.skipped, "quarantined files are not seen again"


def test_the_shorthand_still_works_and_reports_missing_folders(clips, tmp_path):
    data, family = prepared(configure(clips, None, num_frames=5, resolution=16))
    assert len(data.samples) == 3 and family.calls["encode_batch"] == 3
    with pytest.raises(DataError, match="data.instance_data_dir does not exist or is not a folder"):
        scan_samples(configure(clips, None, instance_data_dir=str(tmp_path / "nope")))
    with pytest.raises(DataError, match="no clips or images found"):
        (tmp_path / "empty").mkdir()
        scan_samples(configure(clips, None, instance_data_dir=str(tmp_path / "empty")))


def test_decoded_pixels_match_the_geometry(clips):
    from tuner.data.frames import decode_sample, to_pixels

    scan, samples, _ = plan(configure(clips, [video("a", "clips", resolution=16, video={"num_frames": 5})]))
    frames = decode_sample(samples[0].source, samples[0].geometry)
    assert frames.shape == (5, 13, 20, 3) and frames.dtype == np.uint8  # 24x16 at the area of 16x16
    pixels = to_pixels(frames)
    assert pixels.shape == (5, 3, 13, 20) and pixels.min() >= -1 and pixels.max() <= 1

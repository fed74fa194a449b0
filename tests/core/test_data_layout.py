"""The dataset layout from the backend file (the guide's multidatabackend.json): keys, checks, paths, cache folders."""

from __future__ import annotations

import dataclasses

import pytest
from data_setup import configure, prepared, video
from guide_examples import GUIDE_BACKEND

from tuner.config import resolve_config
from tuner.data.layout import load_layout
from tuner.data.prepare import scan_samples
from tuner.data.synthetic import write_synthetic_clips
from tuner.errors import ConfigError, DataError
from tuner.plugins import PluginHost
from tuner.testing.toy import ToyFamily


@pytest.fixture
def clips(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=3, num_frames=5, width=24, height=16)
    return tmp_path


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

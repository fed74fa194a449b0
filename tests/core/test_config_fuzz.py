"""Property: whatever a config file holds, the loader accepts it or says what is wrong as a `TunerError`.

A seeded, bounded run of `tuner.testing.config_fuzz` (a few seconds); ``bench/fuzz_config.py`` runs 10,000.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuner.errors import TunerError
from tuner.plugins import PluginHost
from tuner.testing.config_fuzz import base_config, config_mutations, entry_points_read_once, load_config_text, write_config


@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "clips").mkdir()
    return folder


def _settings(examples: int):
    return settings(
        max_examples=examples,
        derandomize=True,  # the same examples every run: CI never fails by luck
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    )


def test_the_base_config_loads(fuzz_folder, monkeypatch):
    monkeypatch.chdir(fuzz_folder)
    base = base_config(fuzz_folder)
    config = load_config_text(write_config(fuzz_folder, base, as_toml=True), [])
    assert config.data.instance_data_dir == fuzz_folder / "clips"
    assert sum(len(table) for table in base.values() if isinstance(table, dict)) > 80, "the options are written out"


def test_mutated_configs_load_or_raise_a_tuner_error(fuzz_folder, monkeypatch):
    monkeypatch.chdir(fuzz_folder)
    base = base_config(fuzz_folder)
    outcomes = {"accepted": 0, "refused": 0}

    # 300, not 120: about 7% of mutated configs load, so 120 examples gave 4 to 12 accepted depending on the
    # option list and the folder the suite runs in, around the bound of 10 below; 300 give 20 to 25.
    @_settings(300)
    @given(config_mutations(base), st.booleans())
    def check(case, as_toml):
        config, sets = case
        try:
            load_config_text(write_config(fuzz_folder, config, as_toml), sets)
            outcomes["accepted"] += 1
        except TunerError as exc:
            assert str(exc) and "\n" not in str(exc), "one line"
            outcomes["refused"] += 1
        # Anything else propagates: hypothesis shrinks it to the smallest config that breaks the loader.

    with entry_points_read_once():
        check()
    # Both sides of the property are exercised, not only refusals.
    assert outcomes["accepted"] > 10 and outcomes["refused"] > 10, outcomes


def test_every_float_option_of_every_installed_plugin_refuses_inf_and_nan():
    from pydantic import BaseModel, ValidationError

    def floats(model: type[BaseModel]) -> list[str]:
        return [name for name, info in model.model_fields.items() if "float" in str(info.annotation)]

    host = PluginHost.build(all_installed=True)
    checked = 0
    for section, model in host.sections.items():
        for name in floats(model):
            for bad in (math.inf, -math.inf, math.nan):
                with pytest.raises(ValidationError) as caught:
                    model.model_validate({name: bad})
                assert any(e["loc"] == (name,) for e in caught.value.errors()), f"{section}.{name} = {bad}"
                checked += 1
    assert checked >= 3 * 10, checked


def test_mutated_backend_files_load_or_raise_a_tuner_error(fuzz_folder, monkeypatch):
    import json

    from tuner.config import resolve_config
    from tuner.data.layout import load_layout

    monkeypatch.chdir(fuzz_folder)
    host = PluginHost.build(["wan"])
    config = resolve_config({"data": {"data_backend_config": "backend.json"}}, host, base_dir=fuzz_folder)
    video = {
        "id": "clips", "type": "local", "dataset_type": "video", "instance_data_dir": "clips", "crop": True,
        "crop_aspect": "closest", "resolution": 480, "resolution_type": "pixel_area", "repeats": 1,
        "minimum_image_size": 256, "maximum_image_size": 720, "target_downsample_size": 480,
        "caption_strategy": "textfile", "cache_dir_vae": "cache/vae", "text_embeds": "text",
        "video": {"num_frames": 17, "min_frames": 17, "max_frames": 81, "bucket_strategy": "aspect_ratio"},
    }  # fmt: skip
    text = {"id": "text", "type": "local", "dataset_type": "text_embeds", "default": True, "cache_dir": "cache/text"}
    outcomes = {"accepted": 0, "refused": 0}

    @_settings(60)
    @given(config_mutations({"datasets": [video, text]}, max_mutations=2))
    def check(case):
        wrapped, _ = case
        entries = wrapped.get("datasets", wrapped)  # a mutation may replace or drop the list itself
        (fuzz_folder / "backend.json").write_text(json.dumps(entries))
        try:
            load_layout(config)
            outcomes["accepted"] += 1
        except TunerError as exc:
            assert str(exc) and "\n" not in str(exc), "one line"
            outcomes["refused"] += 1

    check()
    assert outcomes["accepted"] >= 3 and outcomes["refused"] >= 3, outcomes

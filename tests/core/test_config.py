"""Config files, flat guide-style keys, overrides and the schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuner.config import merge, parse_overrides, read_config_file, resolve_config
from tuner.errors import ConfigError
from tuner.plugins import PluginHost


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost.build(["wan"])


def test_guide_style_flat_json_lands_in_sections(tmp_path, host):
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "model_family": "wan",
                "learning_rate": 5e-5,
                "train_batch_size": 2,
                "lora_rank": 16,
                "output_dir": "output/wan",
                "flow_schedule_shift": 3,
                "validation_resolution": "832x480",
                "pretrained_model_name_or_path": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            }
        )
    )
    cfg = resolve_config(read_config_file(path), host, base_dir=tmp_path)
    assert cfg.train.learning_rate == 5e-5 and cfg.train.train_batch_size == 2
    assert cfg.train.flow_schedule_shift == 3.0
    assert cfg.section("wan").pretrained_model_name_or_path == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert cfg.train.output_dir == tmp_path / "output" / "wan", "relative paths resolve beside the config"


def test_toml_tables_and_overrides_merge(tmp_path, host):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nlearning_rate = 1e-3\nseed = 7\n")
    raw = merge(read_config_file(path), parse_overrides(["train.learning_rate=2e-4", "lora_rank=4"]))
    cfg = resolve_config(raw, host, base_dir=tmp_path)
    assert cfg.train.learning_rate == 2e-4 and cfg.train.seed == 7 and cfg.train.lora_rank == 4


def test_same_key_flat_and_in_table_is_refused(host):
    with pytest.raises(ConfigError, match="set both at the top level and in \\[train\\]"):
        resolve_config({"seed": 1, "train": {"seed": 2}}, host)


def test_set_values_are_read_as_toml():
    assert parse_overrides(["a.b=1", "a.c=true", "d=[1, 2]", "e=hello world", "f='x=y'"]) == {
        "a": {"b": 1, "c": True},
        "d": [1, 2],
        "e": "hello world",
        "f": "x=y",
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["nonsense"])


def test_section_must_be_a_table(host):
    with pytest.raises(ConfigError, match="'train' is a section and must be a table"):
        resolve_config({"train": 3}, host)


def test_show_prints_resolved_defaults(make_run, cli):
    config = make_run(steps=3)
    result = cli(["config", "show", "--config", str(config), "--set", "train.seed=5"])
    assert result.exit_code == 0
    assert "seed = 5" in result.output and "max_train_steps = 3" in result.output
    assert "adam_beta1 = 0.9" in result.output, "defaults are filled in"


def test_set_overrides_a_flat_file_key_and_the_other_way_round(tmp_path, cli):
    """The guide's configs are flat; --set may name the option either way."""
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"model_family": "wan", "max_train_steps": 3, "output_dir": "out", "instance_data_dir": "."}))
    tabled = tmp_path / "tabled.toml"
    tabled.write_text('model_family = "wan"\n[train]\nmax_train_steps = 3\n[data]\ninstance_data_dir = "."\n')
    for config, override in [(flat, "train.max_train_steps=7"), (tabled, "max_train_steps=7"), (flat, "max_train_steps=7")]:
        result = cli(["config", "show", "--plugin", "wan", "--config", str(config), "--set", override])
        assert result.exit_code == 0, result.output
        assert "max_train_steps = 7" in result.output


def test_input_files_written_for_the_guide_layout_are_found_from_the_start_folder(tmp_path, monkeypatch, host):
    """The guide keeps its configs in config/wan/ and names files relative to the project root."""
    (tmp_path / "config" / "wan").mkdir(parents=True)
    (tmp_path / "config" / "wan" / "prompts.json").write_text(json.dumps({"boat": "a paper boat"}))
    monkeypatch.chdir(tmp_path)
    raw = {"user_prompt_library": "config/wan/prompts.json", "output_dir": "output/wan"}
    config = resolve_config(raw, host, base_dir=tmp_path / "config" / "wan")
    assert config.validation.user_prompt_library == tmp_path / "config" / "wan" / "prompts.json"
    assert Path(config.train.output_dir) == tmp_path / "config" / "wan" / "output" / "wan", "outputs stay put"
    with pytest.raises(ConfigError, match=r"no such file .*missing.json$"):
        resolve_config({"user_prompt_library": "missing.json"}, host, base_dir=tmp_path)


def test_options_of_installed_plugins_switch_them_on_from_the_cli_and_are_named_in_the_api(make_run, cli, host):
    """The guide's flat config sets feature options at the top level: naming them is enough on the CLI."""
    config = make_run(steps=1)
    result = cli(["config", "show", "--config", str(config), "--set", "attention_mechanism='sdpa-math'"])
    assert result.exit_code == 0, result.output
    assert "plugin 'attention' switched on: the config sets its option 'attention_mechanism'" in result.stderr
    assert "[attention]" in result.output
    with pytest.raises(ConfigError, match="config key 'attention_mechanism' belongs to plugin 'attention', which is not active"):
        resolve_config({"attention_mechanism": "sdpa-math"}, host)


def test_an_empty_string_unsets_an_optional_file(host, tmp_path):
    (tmp_path / "prompts.json").write_text(json.dumps({"boat": "a paper boat"}))
    config = resolve_config({"user_prompt_library": "prompts.json"}, host, base_dir=tmp_path,
                            overrides={"user_prompt_library": ""})
    assert config.validation.user_prompt_library is None


def test_schema_covers_core_and_plugin_sections(cli):
    result = cli(["config", "schema", "--plugin", "wan"])
    schema = json.loads(result.output)
    props = schema["properties"]
    assert {"train", "data", "validation", "wan"} <= set(props)
    assert props["model_family"]["enum"] == ["wan"]
    assert props["train"]["properties"]["learning_rate"]["description"]
    assert props["wan"]["additionalProperties"] is False


def test_every_option_has_a_description():
    host = PluginHost.build(["wan"])
    for name, model in host.sections.items():
        for field, info in model.model_fields.items():
            assert info.description, f"{name}.{field} has no description"


def test_plugins_command_lists_version_hooks_and_sections(cli):
    result = cli(["plugins", "--json"])
    infos = {i["name"]: i for i in json.loads(result.output)}
    assert infos["wan"]["version"] == "0.1.0"
    assert infos["wan"]["sections"] == ["wan"] and infos["wan"]["families"] == ["wan"]
    assert {"load_model", "encode_batch", "compute_loss", "validate"} <= set(infos["wan"]["hooks"])
    assert infos["core"]["sections"] == ["train", "data", "validation", "evaluation", "distributed"]


def test_config_file_path_resolution_keeps_hub_ids(tmp_path, host):
    (tmp_path / "local-model").mkdir()
    cfg = resolve_config({}, host, base_dir=tmp_path)
    assert cfg.resolve_path("local-model") == str((tmp_path / "local-model").resolve())
    assert cfg.resolve_path("Wan-AI/Wan2.1-T2V-1.3B-Diffusers") == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert Path(cfg.resolve_path("/abs/path")) == Path("/abs/path")

"""Config files, flat guide-style keys, overrides and the schema."""

from __future__ import annotations

import re
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


def test_show_prints_resolved_defaults(toy_run, cli):
    config = toy_run(steps=3)
    result = cli(["config", "show", "--config", str(config), "--set", "train.seed=5"])
    assert result.exit_code == 0
    assert "seed = 5" in result.output and "max_train_steps = 3" in result.output
    assert "adam_beta1 = 0.9" in result.output, "defaults are filled in"


def test_set_overrides_a_flat_file_key_and_the_other_way_round(tmp_path, cli, toy_installed):
    """The guide's configs are flat; --set may name the option either way."""
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"model_family": "toy", "max_train_steps": 3, "output_dir": "out", "instance_data_dir": "."}))
    tabled = tmp_path / "tabled.toml"
    tabled.write_text('model_family = "toy"\n[train]\nmax_train_steps = 3\n[data]\ninstance_data_dir = "."\n')
    for config, override in [(flat, "train.max_train_steps=7"), (tabled, "max_train_steps=7"), (flat, "max_train_steps=7")]:
        result = cli(["config", "show", "--plugin", "toy", "--config", str(config), "--set", override])
        assert result.exit_code == 0, result.output
        assert "max_train_steps = 7" in result.output


def test_a_flat_config_json_reads_every_path_from_the_start_folder_as_the_guide_expects(tmp_path, monkeypatch):
    """The guide keeps config/config.json, runs from the folder above and names every path from there."""
    from tuner.config_paths import path_rule_for

    (tmp_path / "config" / "wan").mkdir(parents=True)
    (tmp_path / "config" / "wan" / "prompts.json").write_text(json.dumps({"boat": "a paper boat"}))
    monkeypatch.chdir(tmp_path)
    raw = {"user_prompt_library": "config/wan/prompts.json", "output_dir": "output/wan", "cache_dir": "cache"}
    host = PluginHost.build(["wan", "offload"])
    raw["group_offload_to_disk_path"], raw["enable_group_offload"] = "spill", True
    rule = path_rule_for(Path("config/config.json"), raw, host.sections)
    config = resolve_config(raw, host, rule=rule)
    assert config.validation.user_prompt_library == tmp_path / "config" / "wan" / "prompts.json"
    assert config.train.output_dir == tmp_path / "output" / "wan", "outputs land where the guide says"
    assert config.data.cache_dir == tmp_path / "cache"
    assert config.section("offload").group_offload_to_disk_path == tmp_path / "spill", "plugins' paths too"
    assert config.resolve_path("models/wan/local") == str(tmp_path / "models/wan/local")
    assert config.resolve_path("Wan-AI/Wan2.1-T2V-1.3B-Diffusers") == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "a hub id"


def test_tuners_own_toml_and_sectioned_json_read_paths_from_their_own_folder(tmp_path, monkeypatch, host):
    from tuner.config_paths import path_rule_for

    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path)
    for name, raw in [("c.toml", {"output_dir": "out"}), ("c.json", {"train": {"output_dir": "out"}})]:
        rule = path_rule_for(Path("run") / name, raw, host.sections)
        assert resolve_config(raw, host, rule=rule).train.output_dir == tmp_path / "run" / "out"


def test_a_missing_file_is_named_at_its_real_path_with_the_rule_and_the_file_the_other_folder_holds(
    tmp_path, monkeypatch, host
):
    """Not config/config/wan/webhook.json: the path the rule reads, and where a file of that name is."""
    from tuner.config_paths import path_rule_for

    (tmp_path / "config" / "wan").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    raw = {"webhook_config": "config/wan/webhook.json"}
    with pytest.raises(ConfigError) as err:
        resolve_config(raw, host, rule=path_rule_for(Path("config/config.json"), raw, host.sections))
    message = str(err.value)
    assert f"no such file {tmp_path / 'config/wan/webhook.json'}" in message
    assert "config/config/wan" not in message
    assert "relative paths are read from the folder tuner was started in" in message
    # A TOML beside the file reads it from its own folder; the message points at the start folder's file.
    (tmp_path / "config" / "wan" / "prompts.json").write_text(json.dumps({"boat": "a paper boat"}))
    raw = {"user_prompt_library": "config/wan/prompts.json"}
    with pytest.raises(ConfigError) as err:
        resolve_config(raw, host, rule=path_rule_for(Path("config/run.toml"), raw, host.sections))
    assert f"{tmp_path / 'config/wan/prompts.json'} exists: name it relative to {tmp_path / 'config'}" in str(err.value)


def test_options_of_installed_plugins_switch_them_on_from_the_cli_and_are_named_in_the_api(toy_run, cli, host):
    """The guide's flat config sets feature options at the top level: naming them is enough on the CLI."""
    config = toy_run(steps=1)
    result = cli(["config", "show", "--config", str(config), "--set", "attention_mechanism='sdpa-math'"])
    assert result.exit_code == 0, result.output
    assert "plugin 'attention' switched on: the config sets its option 'attention_mechanism'" in result.stderr
    assert "[attention]" in result.output
    with pytest.raises(ConfigError) as err:
        resolve_config({"attention_mechanism": "sdpa-math"}, host)
    assert str(err.value) == (
        "config key 'attention_mechanism' is an option of the 'attention' plugin, which is not enabled: enable it"
        ' (plugins = [..., "attention"] or --plugin attention)'
    )


@pytest.mark.parametrize(
    ("key", "message"),
    [
        # An option of an installed plugin that is not enabled: what to enable, not "unknown key".
        ("crepa_block_index", "is an option of the 'crepa' plugin, which is not enabled: enable it (plugins = [..., \"crepa\"]"),
        ("tread_config", "is an option of the 'tread' plugin, which is not enabled"),
        ("flux_model_flavour", "is an option of the 'flux' plugin, which is not enabled"),
        # A misspelt option named after an installed plugin: that plugin's nearest option.
        ("crepa_blok_index", "'crepa_blok_index' is not an option of the 'crepa' plugin (did you mean 'crepa_block_index'?)"),
        # Named after no installed plugin: no plugin is invented from the key's first word.
        ("ltx2_frame_rate", "unknown config key 'ltx2_frame_rate': no installed plugin offers it"),
        ("scheduled_samplng_sampler", "unknown config key 'scheduled_samplng_sampler': no installed plugin offers it"),
        ("is_i2vv", "unknown config key 'is_i2vv': no installed plugin offers it"),
        # A plain typo keeps its suggestion, a core option's too.
        ("lerning_rate", "unknown config key 'lerning_rate' (did you mean 'learning_rate'?)"),
        ("train_batch_sise", "unknown config key 'train_batch_sise' (did you mean 'train_batch_size'?)"),
    ],
)
def test_a_refused_key_names_the_missing_plugin_from_what_is_installed(host, key, message):
    with pytest.raises(ConfigError) as err:
        resolve_config({key: 1}, host)
    assert message in str(err.value)
    named = re.findall(r"'(\w+)' plugin", str(err.value))
    assert set(named) <= set(PluginHost.build(all_installed=True).active), "only a real plugin is named"


def test_the_guides_literal_spellings_are_accepted(tmp_path, host):
    """"--user_prompt_library" as the guide adds it; pretrained_transformer_name_or_path beside the long name."""
    (tmp_path / "prompts.json").write_text(json.dumps({"boat": "a paper boat"}))
    raw = {"--user_prompt_library": "prompts.json", "pretrained_transformer_name_or_path": "/models/t.safetensors"}
    config = resolve_config(raw, host, base_dir=tmp_path)
    assert config.validation.user_prompt_library == tmp_path / "prompts.json"
    assert config.section("wan").pretrained_transformer_model_name_or_path == "/models/t.safetensors"
    tabled = resolve_config({"wan": {"pretrained_transformer_name_or_path": "x.safetensors"}}, host, base_dir=tmp_path)
    assert tabled.section("wan").pretrained_transformer_model_name_or_path == "x.safetensors"
    with pytest.raises(ConfigError, match="'pretrained_transformer_model_name_or_path' is set twice"):
        resolve_config({**raw, "pretrained_transformer_model_name_or_path": "/other"}, host, base_dir=tmp_path)


def test_an_option_set_in_the_file_is_switched_off_from_the_command_line(toy_run, cli):
    from tuner.config import load_run_config

    config = toy_run(steps=1, overrides=["validation.validation_guidance_skip_layers=[1]", "train.lora_alpha=4.0"])
    _, before = load_run_config(config, None, [])
    assert before.validation.validation_guidance_skip_layers == [1] and before.train.lora_alpha == 4.0
    for off in ("validation_guidance_skip_layers=", "validation_guidance_skip_layers=null",
                "validation_guidance_skip_layers=[]"):
        _, after = load_run_config(config, None, [off, "lora_alpha=null"])
        assert after.validation.validation_guidance_skip_layers is None and after.train.lora_alpha is None
    # An option that always takes a value says so in one line.
    result = cli(["config", "show", "--config", str(config), "--set", "train.seed="])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: train.seed cannot be switched off (unset/null): it always takes a value; give one (its default is 42)"
    )
    result = cli(["config", "show", "--config", str(config), "--set", "validation_negative_prompt=''"])
    assert result.exit_code == 0, "a quoted '' is an empty text, not 'off'"


def test_an_empty_string_unsets_an_optional_file(host, tmp_path):
    (tmp_path / "prompts.json").write_text(json.dumps({"boat": "a paper boat"}))
    config = resolve_config({"user_prompt_library": "prompts.json"}, host, base_dir=tmp_path,
                            overrides={"user_prompt_library": ""})
    assert config.validation.user_prompt_library is None


def test_schema_covers_core_and_plugin_sections(cli, toy_installed):
    result = cli(["config", "schema", "--plugin", "toy"])
    schema = json.loads(result.output)
    props = schema["properties"]
    assert {"train", "data", "validation", "toy"} <= set(props)
    assert props["model_family"]["enum"] == ["toy"]
    assert props["train"]["properties"]["learning_rate"]["description"]
    assert props["toy"]["additionalProperties"] is False


def test_every_option_has_a_description():
    host = PluginHost.build(["wan"])
    for name, model in host.sections.items():
        for field, info in model.model_fields.items():
            assert info.description, f"{name}.{field} has no description"


def test_plugins_command_lists_version_hooks_and_sections(cli, toy_installed):
    result = cli(["plugins", "--json"])
    infos = {i["name"]: i for i in json.loads(result.output)}
    assert infos["toy"]["version"] == "0", "the version its distribution declares"
    assert infos["toy"]["sections"] == ["toy"] and infos["toy"]["families"] == ["toy"]
    assert {"load_model", "encode_batch", "compute_loss", "validate"} <= set(infos["toy"]["hooks"])
    assert infos["core"]["sections"] == ["train", "data", "validation", "evaluation", "distributed"]


def test_config_file_path_resolution_keeps_hub_ids(tmp_path, host):
    (tmp_path / "local-model").mkdir()
    cfg = resolve_config({}, host, base_dir=tmp_path)
    assert cfg.resolve_path("local-model") == str((tmp_path / "local-model").resolve())
    assert cfg.resolve_path("Wan-AI/Wan2.1-T2V-1.3B-Diffusers") == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert Path(cfg.resolve_path("/abs/path")) == Path("/abs/path")

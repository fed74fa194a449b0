"""Where a family's weights come from: one definition of the source options (`tuner.loading.source_options`),
one table of them in docs/plugins.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tuner.config import resolve_config
from tuner.errors import ConfigError
from tuner.loading import SOURCE_ROLES, SourceOptions
from tuner.plugins import PluginHost

ROOT = Path(__file__).resolve().parents[2]
HEADING = "### Where the weights come from: one table of source options"
COLUMNS = {"wan": 2, "flux": 3, "ltx": 4}  # the family's column in the table


def _ltx_section() -> type:
    """The LTX example's section class, read from its source (the example is a package of its own)."""
    path = ROOT / "examples" / "tuner-ltx" / "src" / "tuner_ltx" / "plugin.py"
    spec = importlib.util.spec_from_file_location("tuner_ltx_plugin_for_docs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LtxSection


def _sections() -> dict[str, type]:
    host = PluginHost.build(["wan", "flux"])
    return {"wan": host.sections["wan"], "flux": host.sections["flux"], "ltx": _ltx_section()}


def _table() -> dict[str, list[str]]:
    """role -> the cells of its row in the docs table."""
    text = (ROOT / "docs" / "plugins.md").read_text()
    assert HEADING in text
    rows = {}
    for line in text.split(HEADING, 1)[1].split("\n### ", 1)[0].splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0].strip("`")] = cells
    return rows


def test_every_family_states_its_sources_with_the_one_definition_and_the_docs_table_lists_them():
    rows = _table()
    assert set(rows) == set(SOURCE_ROLES), "one row per role of tuner.loading.SOURCE_ROLES"
    for family, section in _sections().items():
        assert issubclass(section, SourceOptions) and section.source_section == family
        for role, name in section.source_names.items():
            field = section.model_fields[name]
            # The shared description (its text up to the family's own words), from the one table.
            assert field.description.startswith(SOURCE_ROLES[role][1].split("{")[0][:30]), (family, role)
            assert f"`{name}`" in rows[role][COLUMNS[family]], f"docs/plugins.md: {family}'s {role} option {name}"
        for role, cells in rows.items():
            if role not in section.source_names:
                assert cells[COLUMNS[family]] == "", f"docs/plugins.md names a {role} option {family} does not have"


def test_option_names_and_spellings_stay_as_users_write_them():
    sections = _sections()
    assert list(sections["wan"].model_fields)[:7] == [
        "model_flavour", "pretrained_model_name_or_path", "pretrained_transformer_model_name_or_path",
        "pretrained_transformer_subfolder", "pretrained_vae_model_name_or_path", "pretrained_t5_model_name_or_path",
        "revision",
    ]  # fmt: skip
    assert list(sections["flux"].model_fields)[:5] == [
        "flux_model_flavour", "flux_pretrained_model_name_or_path", "flux_pretrained_transformer_model_name_or_path",
        "flux_pretrained_transformer_subfolder", "flux_revision",
    ]  # fmt: skip
    assert sections["ltx"].model_fields["ltx_model_path"].default == "Lightricks/LTX-Video"
    wan = sections["wan"].model_validate({"pretrained_transformer_name_or_path": "t.safetensors"})
    assert wan.pretrained_transformer_model_name_or_path == "t.safetensors"
    with pytest.raises(ValueError, match="flux_pretrained_transformer_name_or_path"):
        sections["flux"].model_validate({"flux_pretrained_transformer_name_or_path": "t.safetensors"})


def test_each_part_comes_from_its_own_option_else_the_base_and_names_that_option(tmp_path: Path):
    host = PluginHost.build(["wan"])
    (tmp_path / "vae-model").mkdir()
    config = resolve_config(
        {"wan": {"pretrained_vae_model_name_or_path": "vae-model", "pretrained_transformer_subfolder": "none"}},
        host,
        base_dir=tmp_path,
    )
    sources = config.section("wan").model_sources(config.resolve_path, "Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    assert sources.base == sources.transformer == sources.t5 == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert sources.vae == str(tmp_path / "vae-model")  # the config's path rule
    assert sources.transformer_subfolder is None and sources.revision is None
    assert sources.options == {
        "model": "wan.pretrained_model_name_or_path",
        "transformer": "wan.pretrained_model_name_or_path",
        "vae": "wan.pretrained_vae_model_name_or_path",
        "t5": "wan.pretrained_model_name_or_path",
    }


def test_a_missing_transformer_file_is_named_by_its_section_and_option(tmp_path: Path):
    host = PluginHost.build(["flux"])
    missing = tmp_path / "finetune.safetensors"
    config = resolve_config(
        {"model_family": "flux", "flux": {"flux_pretrained_transformer_model_name_or_path": str(missing)}}, host
    )
    with pytest.raises(ConfigError, match=rf"^flux\.flux_pretrained_transformer_model_name_or_path: no such file {missing}$"):
        host.load_model(config, torch.device("cpu"))

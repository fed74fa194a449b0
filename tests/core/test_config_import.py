"""`tuner config import`: the guide's config.json + multidatabackend.json as a tuner TOML that means the same."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from tuner.config import read_config_file, resolve_config
from tuner.data.layout import load_layout
from tuner.data.synthetic import write_synthetic_clips
from tuner.demo import prepare_tiny_model
from tuner.plugins import PluginHost
from tuner.setup.importer import _plugins_for, _split

GUIDE = Path(__file__).parent / "guide"  # the quickstart guide's example files, verbatim


def _guide_folder(root: Path, config: dict | None = None, backend: list | None = None) -> Path:
    """The guide's layout: config/config.json, config/wan/multidatabackend.json and the files they name."""
    (root / "config" / "wan").mkdir(parents=True)
    (root / "datasets" / "disney-black-and-white").mkdir(parents=True)
    (root / "config" / "wan" / "lycoris_config.json").write_text(json.dumps({"algo": "lokr", "factor": 16}))
    (root / "config" / "wan" / "webhook.json").write_text(json.dumps({"webhook_url": "https://example.com/hook", "webhook_type": "raw"}))
    (root / "config" / "config.json").write_text(json.dumps(config or json.loads((GUIDE / "config.json").read_text())))
    (root / "config" / "wan" / "multidatabackend.json").write_text(
        json.dumps(backend or json.loads((GUIDE / "multidatabackend.json").read_text()))
    )
    return root


def _load(path: Path, extra: dict | None = None):
    raw = {**read_config_file(path), **(extra or {})}
    host, _, _ = _plugins_for(raw)
    return resolve_config(_split(raw, host)[0], host, base_dir=path.parent)


def test_the_guides_files_import_to_the_same_validated_config(tmp_path, monkeypatch, cli):
    root = _guide_folder(tmp_path)
    monkeypatch.chdir(root)  # the guide runs from the folder above config/
    config = json.loads((GUIDE / "config.json").read_text())
    config.update(report_to="none", validation_preview=True)  # wandb is not installed here; a key tuner drops
    (root / "config" / "config.json").write_text(json.dumps(config, ensure_ascii=False))
    result = cli(["config", "import", "config/config.json", "config/wan/multidatabackend.json", "--out", "tuner/run.toml"])
    assert result.exit_code == 0, result.output + result.stderr
    assert "dropped validation_preview" in result.stderr

    original = _load(root / "config" / "config.json")
    imported = _load(root / "tuner" / "run.toml")
    assert original.model_family == imported.model_family and set(original.plugins) == set(imported.plugins)
    for name, section in original.sections.items():
        ours = imported.sections[name].model_dump()
        theirs = section.model_dump()
        if name == "data":  # the backend file moved: compared below, dataset by dataset
            ours.pop("data_backend_config"), theirs.pop("data_backend_config")
        assert ours == theirs, name
    strip = lambda spec: dataclasses.replace(spec, where="")  # noqa: E731 - `where` names the file
    assert [strip(s) for s in load_layout(imported).datasets] == [strip(s) for s in load_layout(original).datasets]
    assert load_layout(imported).default_text_cache == load_layout(original).default_text_cache

    text = (root / "tuner" / "run.toml").read_text()
    assert '# config.json: "true", read as true\npush_to_hub = true' in text, "a value read as another type says so"
    assert '# config.json: "config/wan/webhook.json"; here relative to this file' in text
    assert "# dropped validation_preview = true: is not supported" in text
    again = cli(["config", "import", "config/config.json", "config/wan/multidatabackend.json", "--out", "tuner/run.toml"])
    assert again.exit_code == 2 and "run.toml exists: pass --force" in again.stderr, "nothing is overwritten silently"


@pytest.mark.slow
def test_an_imported_guide_config_trains_the_tiny_model(tmp_path, monkeypatch, tiny_model_dir, cli):
    """The guide's files with only CPU substitutions (tiny model, small clips, no uploads, two steps)."""
    model = tiny_model_dir("wan")
    overrides = prepare_tiny_model(PluginHost.build(["wan"]), "wan", model)
    config = json.loads((GUIDE / "config.json").read_text())
    config.update(
        pretrained_model_name_or_path=overrides["wan.pretrained_model_name_or_path"],
        pretrained_t5_model_name_or_path=overrides["wan.pretrained_model_name_or_path"],
        max_sequence_length=overrides["wan.max_sequence_length"],
        attention_mechanism="diffusers", report_to="none", push_to_hub=False, push_checkpoints_to_hub=False,
        max_train_steps=2, lr_warmup_steps=0, checkpoint_step_interval=2, mixed_precision="no",
        resolution=64, validation_disable=True,
    )
    config.pop("hub_model_id")
    backend = json.loads((GUIDE / "multidatabackend.json").read_text())
    backend[0].update(resolution=64, minimum_image_size=64, maximum_image_size=64, target_downsample_size=64)
    backend[0]["video"].update(num_frames=17, min_frames=17)
    root = _guide_folder(tmp_path, config, backend)
    write_synthetic_clips(root / "datasets" / "disney-black-and-white", count=2, num_frames=17, width=64, height=64)
    monkeypatch.chdir(root)
    result = cli(["config", "import", "config/config.json", "config/wan/multidatabackend.json", "--out", "run/config.toml"])
    assert result.exit_code == 0, result.output + result.stderr
    shutil.move("config", "moved-away")  # the TOML stands on its own: it needs no file of the old layout but its inputs
    (root / "config" / "wan").mkdir(parents=True)
    shutil.copy("moved-away/wan/webhook.json", "config/wan/webhook.json")
    shutil.copy("moved-away/wan/lycoris_config.json", "config/wan/lycoris_config.json")
    trained = cli(["train", "--config", "run/config.toml"])
    assert trained.exit_code == 0, trained.output + trained.stderr
    assert "adapter:" in trained.output

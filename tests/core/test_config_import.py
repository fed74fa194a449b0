"""`tuner config import`: the guide's config.json + multidatabackend.json as a tuner TOML that means the same."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from tuner.config import read_config_file, resolve_config
from tuner.config_paths import path_rule_for
from tuner.data.layout import load_layout
from tuner.data.synthetic import write_synthetic_clips
from tuner.demo import prepare_tiny_model
from tuner.plugins import PluginHost
from tuner.setup.importer import _plugins_for, _split

from guide_examples import GUIDE_BACKEND, GUIDE_CONFIG, GUIDE_CONFIG_ADDITIONS, GUIDE_PROMPT_LIBRARY


def _guide_folder(root: Path, config: dict, backend: list) -> Path:
    """The guide's layout: config/config.json, config/wan/multidatabackend.json and the files they name."""
    (root / "config" / "wan").mkdir(parents=True)
    (root / "datasets" / "disney-black-and-white").mkdir(parents=True, exist_ok=True)
    (root / "config" / "wan" / "lycoris_config.json").write_text(json.dumps({"algo": "lokr", "factor": 16}))
    hook = {"webhook_url": "https://example.com/hook", "webhook_type": "raw"}
    (root / "config" / "wan" / "webhook.json").write_text(json.dumps(hook))
    (root / "config" / "user_prompt_library.json").write_text(json.dumps(GUIDE_PROMPT_LIBRARY))
    (root / "config" / "config.json").write_text(json.dumps(config, ensure_ascii=False))
    (root / "config" / "wan" / "multidatabackend.json").write_text(json.dumps(backend))
    return root


def _load(path: Path):
    """The file as `tuner train` validates it (its path rule included), less the keys tuner drops."""
    raw = read_config_file(path)
    host, _, _ = _plugins_for(raw)
    kept = _split(raw, host)[0]
    return resolve_config(kept, host, rule=path_rule_for(path, kept, host.sections))


def test_the_guides_files_import_to_the_same_validated_config(tmp_path, monkeypatch, cli):
    # wandb is not installed here; "colour" is a key no plugin takes: it is dropped, with a comment.
    config = {**GUIDE_CONFIG, **GUIDE_CONFIG_ADDITIONS, "report_to": "none", "colour": "red"}
    root = _guide_folder(tmp_path, config, GUIDE_BACKEND)
    monkeypatch.chdir(root)  # the guide runs from the folder above config/
    result = cli(["config", "import", "config/config.json", "config/wan/multidatabackend.json", "--out", "tuner/run.toml"])
    assert result.exit_code == 0, result.output + result.stderr
    assert "dropped colour" in result.stderr

    original = _load(root / "config" / "config.json")
    imported = _load(root / "tuner" / "run.toml")
    assert original.model_family == imported.model_family and set(original.plugins) == set(imported.plugins)
    for name, section in original.sections.items():
        ours = imported.sections[name].model_dump()
        theirs = section.model_dump()
        if name == "data":  # the backend file moved: compared below, dataset by dataset
            ours.pop("data_backend_config"), theirs.pop("data_backend_config")
        assert ours == theirs, name
    # `where` names the file and `source` is the folder as written there: the import rewrites it relative
    # to the new file, so only the folder it resolves to (`root`) must match
    strip = lambda spec: dataclasses.replace(spec, where="", source="")  # noqa: E731
    assert [strip(s) for s in load_layout(imported).datasets] == [strip(s) for s in load_layout(original).datasets]
    assert load_layout(imported).default_text_cache == load_layout(original).default_text_cache

    text = (root / "tuner" / "run.toml").read_text()
    assert '# config.json: "True", read as true\npush_to_hub = true' in text, "a value read as another type says so"
    assert '# config.json: "config/wan/webhook.json"; here relative to this file' in text
    assert '# dropped colour = "red": unknown config key' in text
    assert 'user_prompt_library = "../config/user_prompt_library.json"' in text, "the guide's --key, in its section"
    again = cli(["config", "import", "config/config.json", "config/wan/multidatabackend.json", "--out", "tuner/run.toml"])
    assert again.exit_code == 2 and "run.toml exists: pass --force" in again.stderr, "nothing is overwritten silently"


@pytest.mark.slow
def test_an_imported_guide_config_trains_the_tiny_model(tmp_path, monkeypatch, tiny_model_dir, cli):
    """The guide's files with only CPU substitutions (tiny model, small clips, no uploads, two steps)."""
    model = tiny_model_dir("wan")
    overrides = prepare_tiny_model(PluginHost.build(["wan"]), "wan", model)
    # TREAD's route starts at block 2: the tiny model has two blocks, so it stays out here.
    config = {**GUIDE_CONFIG, **GUIDE_CONFIG_ADDITIONS}
    config.pop("tread_config")
    config.update(
        pretrained_model_name_or_path=overrides["wan.pretrained_model_name_or_path"],
        pretrained_t5_model_name_or_path=overrides["wan.pretrained_model_name_or_path"],
        max_sequence_length=overrides["wan.max_sequence_length"],
        attention_mechanism="diffusers", report_to="none", push_to_hub=False, push_checkpoints_to_hub=False,
        max_train_steps=2, lr_warmup_steps=0, checkpoint_step_interval=2, mixed_precision="no",
        resolution=64, validation_disable=True,
    )
    config.pop("hub_model_id")
    backend = json.loads(json.dumps(GUIDE_BACKEND))
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
    shutil.copy("moved-away/user_prompt_library.json", "config/user_prompt_library.json")
    trained = cli(["train", "--config", "run/config.toml"])
    assert trained.exit_code == 0, trained.output + trained.stderr
    assert "adapter:" in trained.output


def test_the_guides_config_imports_without_wandb_installed_and_train_names_the_package(tmp_path, monkeypatch, cli):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    root = _guide_folder(tmp_path, {**GUIDE_CONFIG, **GUIDE_CONFIG_ADDITIONS}, GUIDE_BACKEND)
    hook = {"webhook_url": "https://example.com/hook", "webhook_type": "raw", "log_level": "info"}  # SimpleTuner's key
    (root / "config" / "wan" / "webhook.json").write_text(json.dumps(hook))
    monkeypatch.chdir(root)
    result = cli(["config", "import", "config/config.json", "config/wan/multidatabackend.json", "--out", "run.toml"])
    assert result.exit_code == 0, result.output + result.stderr
    toml = (root / "run.toml").read_text()
    assert "report_to = \"wandb\"" in toml
    assert "not installed here: report_to = wandb needs the 'wandb' package: pip install wandb" in toml
    shown = cli(["config", "show", "--config", "run.toml"])
    assert shown.exit_code == 2 and shown.stderr.strip().endswith("pip install wandb")

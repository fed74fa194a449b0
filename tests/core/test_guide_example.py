"""The Wan guide's example files, run as the guide runs them: from the folder above config/, on a CPU.

Only what a CPU needs is changed, each by ``--set`` on the command line (the backend file takes no
``--set``: its sizes are the one edit in a file, listed in CPU_BACKEND): the tiny model instead of
the hub's, an attention kernel that runs on a CPU, no network (W&B, Hub, webhook), two steps and a
tiny validation. Everything else is the guide's, and the outputs must land where the guide says.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from guide_examples import GUIDE_BACKEND, GUIDE_CONFIG, GUIDE_CONFIG_ADDITIONS, GUIDE_PROMPT_LIBRARY

from tuner.data.synthetic import write_synthetic_clips

# The dataset entry's sizes, for a CPU: 480-pixel, 75-frame clips would take minutes per step.
CPU_BACKEND = {"resolution": 32, "minimum_image_size": 32, "maximum_image_size": 32, "target_downsample_size": 32}
CPU_FRAMES = {"num_frames": 5, "min_frames": 5}


@pytest.fixture(scope="module")
def ten_block_transformer(tmp_path_factory) -> Path:
    """The guide's validation_guidance_skip_layers [9] and TREAD route 2..-2 need 10 blocks or more."""
    from diffusers import WanTransformer3DModel

    from tuner_wan.tiny import TINY_TRANSFORMER

    folder = tmp_path_factory.mktemp("wan-10-blocks")
    WanTransformer3DModel(**{**TINY_TRANSFORMER, "num_layers": 10}).save_pretrained(str(folder / "transformer"))
    return folder / "transformer"


def write_guide_layout(root: Path) -> None:
    """config/config.json (with the lines the guide adds), config/wan/multidatabackend.json,
    config/user_prompt_library.json and datasets/disney-black-and-white/, as the guide lays them out."""
    (root / "config" / "wan").mkdir(parents=True)
    config = {**GUIDE_CONFIG, **GUIDE_CONFIG_ADDITIONS}
    (root / "config" / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    backend = copy.deepcopy(GUIDE_BACKEND)
    backend[0].update(CPU_BACKEND)
    backend[0]["video"].update(CPU_FRAMES)
    (root / "config" / "wan" / "multidatabackend.json").write_text(json.dumps(backend, indent=2))
    (root / "config" / "user_prompt_library.json").write_text(json.dumps(GUIDE_PROMPT_LIBRARY, ensure_ascii=False))
    write_synthetic_clips(root / "datasets" / "disney-black-and-white", count=2, num_frames=5, width=32, height=32)


def cpu_substitutions(model: Path, transformer: Path) -> list[str]:
    return [
        # The tiny model instead of the hub's (the transformer under the guide's other spelling).
        f"pretrained_model_name_or_path='{model}'",
        f"pretrained_t5_model_name_or_path='{model}'",
        f"pretrained_transformer_name_or_path='{transformer.parent}'",
        "attention_mechanism=diffusers",  # sageattention needs CUDA: the default kernel
        # No network: W&B, the Hub and the webhook (whose file the guide does not give) are switched off.
        "report_to=none",
        "push_to_hub=false",
        "push_checkpoints_to_hub=false",
        "webhook_config=",
        # Two steps and a tiny validation at the end.
        "max_train_steps=2",
        "validation_num_inference_steps=2",
        "validation_num_video_frames=5",
        "validation_resolution=32x32",
    ]


@pytest.mark.slow
def test_the_guides_files_run_from_the_guides_folder_and_outputs_land_where_the_guide_says(
    tmp_path, monkeypatch, tiny_model_dir, ten_block_transformer, cli
):
    root = tmp_path / "project"
    write_guide_layout(root)
    monkeypatch.chdir(root)
    args = ["train", "--config", "config/config.json"]
    for item in cpu_substitutions(tiny_model_dir("wan"), ten_block_transformer):
        args += ["--set", item]
    result = cli(args)
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stderr.split())

    # Outputs and caches under the folder tuner started in, where the guide's paths point.
    output = root / "output" / "wan"
    assert f"outputs go to {output}" in said
    assert "relative paths are read from the folder tuner was started in" in said
    assert (output / "checkpoint-2").is_dir() and list(output.glob("*.safetensors")), "adapter and EMA adapter"
    assert list((root / "cache" / "vae" / "wan" / "disney-black-and-white").rglob("*.safetensors*"))
    assert list((root / "cache" / "text" / "wan").rglob("*.safetensors*")), "compress_disk_cache: .safetensors.gz"
    assert not (root / "config" / "output").exists() and not (root / "config" / "cache").exists()
    # The prompt library ("--user_prompt_library") rendered, each clip named by its nickname.
    media = {p.stem for p in (output / "validation" / "step-2").glob("*.mp4")}
    assert media == {"main", *(name.replace("<token>", "_token") for name in GUIDE_PROMPT_LIBRARY)}, media
    # The TREAD route the guide adds, said at start on this 10-block model.
    assert "TREAD: 10% of latent tokens skip blocks 2-8 (7 of 10)" in said


def test_the_guides_config_json_names_its_files_at_their_real_paths(tmp_path, monkeypatch, cli):
    """A file the guide names but the folder lacks is reported where tuner looked, not config/config/..."""
    root = tmp_path / "project"
    write_guide_layout(root)
    monkeypatch.chdir(root)
    result = cli(["config", "show", "--config", "config/config.json", "--set", "report_to=none"])
    assert result.exit_code == 2
    assert f"no such file {root / 'config' / 'wan' / 'webhook.json'}" in result.stderr
    assert "config/config/" not in result.stderr


# The scheduled sampling lines the guide's experimental features page adds to config.json (its basic setup).
GUIDE_ROLLOUT = {
    "scheduled_sampling_max_step_offset": 10,
    "scheduled_sampling_probability": 1.0,
    "scheduled_sampling_sampler": "unipc",
}


@pytest.mark.slow
def test_the_guides_config_with_scheduled_sampling_trains_from_the_guides_folder(
    tmp_path, monkeypatch, tiny_model_dir, ten_block_transformer, cli
):
    root = tmp_path / "project"
    write_guide_layout(root)
    path = root / "config" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **GUIDE_ROLLOUT}, indent=2))
    monkeypatch.chdir(root)
    args = ["train", "--config", "config/config.json"]
    for item in [*cpu_substitutions(tiny_model_dir("wan"), ten_block_transformer), "max_train_steps=1",
                 "validation_disable=true"]:
        args += ["--set", item]
    result = cli(args)
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert "plugin 'rollout' switched on: the config sets its option 'scheduled_sampling_max_step_offset'" in said
    assert "scheduled sampling: each sample with a 100% chance starts 1-10 steps noisier and is denoised by the model (unipc)" in said
    from tuner.report.jsonlog import read_log

    steps = [r for r in read_log(root / "output" / "wan") if r["event"] == "step"]
    assert len(steps) == 1 and steps[0]["rollout_samples"] >= 1 and steps[0]["rollout_forwards"] >= steps[0]["rollout_samples"]

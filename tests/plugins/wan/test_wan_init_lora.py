"""init_lora from every layout tuner reads, and ``tuner lora info`` / ``tuner lora convert`` on the tiny Wan."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from tuner.config import read_config_file
from tuner.errors import ConfigError
from tuner.lora.layouts import read_adapter
from tuner.plugins import PluginHost
from tuner.train.adapters import AdapterSet, PeftLora
from tuner.train.init_lora import init_from_file
from tuner.train.settings import TrainSection
from tuner.types.bundle import Expert


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_model_dir):
    """A 2-step run's adapter (alpha 8, rank 4), in tuner's default layout, and the tiny model it was trained on."""
    from tuner.testing.runs import run_cli, write_run_folder

    folder = tmp_path_factory.mktemp("source")
    config = write_run_folder(
        folder, tiny_model_dir("wan"), plugin="wan", steps=2, clips=1,
        overrides=["validation.validation_prompt=''", "train.learning_rate=1e-2", "train.lora_rank=4",
                   "train.lora_alpha=8.0", "train.checkpoint_step_interval=0"],
    )
    result = run_cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    return folder / read_config_file(config)["train"]["output_dir"] / "pytorch_lora_weights.safetensors"


def _fresh(tiny_model_dir, rank=4, alpha=8.0):
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel.from_pretrained(str(tiny_model_dir("wan")), subfolder="transformer")
    tc = TrainSection(lora_rank=rank, lora_alpha=alpha)
    adapter = PeftLora(model, tc, ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"])
    return AdapterSet([(Expert("denoiser", model), adapter)])


def _musubi(path, out):
    """The layout musubi-tuner writes for Wan (kohya names: lora_unet_blocks_0_self_attn_q.lora_down.weight, .alpha)."""
    tensors = load_file(str(path))
    renamed = {}
    for key, value in tensors.items():
        body = key.removeprefix("diffusion_model.")
        module, _, param = body.partition(".lora_") if ".lora_" in body else (body.rsplit(".", 1)[0], "", "alpha")
        param = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}.get(param, param)
        renamed[f"lora_unet_{module.replace('.', '_')}.{param}"] = value
    save_file(renamed, str(out))
    return out


@pytest.mark.parametrize("layout", ["comfyui", "diffusers", "kohya", "peft", "musubi"])
def test_init_lora_from_each_layout_starts_at_the_source_weights(source, tiny_model_dir, cli, tmp_path, layout):
    if layout == "comfyui":
        file = source
    elif layout == "musubi":
        file = _musubi(source, tmp_path / "musubi.safetensors")
    else:
        file = tmp_path / f"{layout}.safetensors"
        result = cli(["lora", "convert", str(source), str(file), "--to", layout])
        assert result.exit_code == 0, result.stderr
    adapters = _fresh(tiny_model_dir)
    [line] = init_from_file(adapters, file, 4, 8.0, PluginHost.build(["wan"]).lora_namings())
    assert "20 of the 20 adapted modules start from it" in line
    expected = read_adapter(source, PluginHost.build(["wan"]).lora_namings()).weights.tensors
    got = adapters.members[0][1].weights().tensors
    assert sorted(got) == sorted(expected)
    assert max((got[k] - expected[k]).abs().max().item() for k in expected) == 0.0


def test_init_lora_in_a_run_says_what_matched(source, make_run, cli):
    config = make_run(name="init", steps=1, clips=1, overrides=[
        "validation.validation_prompt=''", "train.lora_rank=4", f"train.init_lora='{source}'"])
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    assert "train.init_lora pytorch_lora_weights.safetensors (comfyui layout, lora rank 4): 20 of the 20" in result.stderr
    assert "lora_B scaled by 2" in result.stderr  # the file's alpha 8 / rank 4 kept under lora_alpha = rank


def test_a_mismatched_rank_or_another_models_file_is_one_clear_line(source, tiny_model_dir, tmp_path):
    namings = PluginHost.build(["wan"]).lora_namings()
    with pytest.raises(ConfigError, match=r"has rank 4 and train.lora_rank is 8: set lora_rank = 4$"):
        init_from_file(_fresh(tiny_model_dir, rank=8), source, 8, 8.0, namings)
    other = tmp_path / "flux.safetensors"
    save_file({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 64),
               "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(64, 4)}, str(other))
    with pytest.raises(ConfigError, match="1 of its 1 modules .* are not this model's modules: a file for another model"):
        init_from_file(_fresh(tiny_model_dir), other, 4, 8.0, namings)
    wider = tmp_path / "wider.safetensors"
    tensors = load_file(str(source))
    save_file({k: torch.cat([v, v], 1) if k.endswith("lora_A.weight") else v for k, v in tensors.items()}, str(wider))
    with pytest.raises(ConfigError, match=r"is \(4, 64\), this model's is \(4, 32\): a file for another model"):
        init_from_file(_fresh(tiny_model_dir), wider, 4, 8.0, namings)


def test_lora_info_shows_layout_rank_targets_metadata_and_where_it_loads(source, cli, tmp_path):
    result = cli(["lora", "info", str(source)])
    assert result.exit_code == 0, result.stderr
    out = result.output
    assert "layout: comfyui" in out and "model family: wan, flavour t2v-480p-1.3b-2.1" in out
    assert "adapter: lora, rank 4, alpha 8 (scale 2), 20 modules" in out and "ffn.net.2" in out
    assert "loads in: ComfyUI" in out and "  ss_network_dim = 4" in out and "  modelspec.sai_model_spec = 1.0.0" in out
    kohya = tmp_path / "k.safetensors"
    assert cli(["lora", "convert", str(source), str(kohya), "--to", "kohya"]).exit_code == 0
    again = cli(["lora", "convert", str(source), str(kohya), "--to", "kohya"])
    assert again.exit_code == 2 and "exists: pass --force" in again.stderr
    assert all(k.startswith("lora_unet_blocks_") for k in load_file(str(kohya)))
    assert "layout: kohya" in cli(["lora", "info", str(kohya)]).output


def test_hook_lora_naming_maps_every_original_name_both_ways():
    from tuner_wan.export import ORIGINAL_NAMES

    naming = PluginHost.build(["wan"]).lora_namings()["wan"]
    for module in [*ORIGINAL_NAMES, *(f"blocks.7.{m}" for m in ORIGINAL_NAMES)]:
        assert naming.from_original(naming.to_original(module)) == module
    with pytest.raises(ValueError):
        naming.from_original("blocks.0.self_attn.nope")
    assert set(naming.loads_in) == {"comfyui", "kohya", "diffusers", "peft", "lycoris"}


def test_init_lora_from_a_lycoris_file_starts_at_its_weights(make_run, cli, tiny_model_dir, tmp_path):
    import json

    from diffusers import WanTransformer3DModel

    from tuner.train.adapters import Lycoris

    options = tmp_path / "lokr.json"
    options.write_text(json.dumps({"algo": "lokr", "multiplier": 1.0, "linear_dim": 4, "linear_alpha": 2, "factor": 4}))
    config = make_run(name="lokr", steps=2, clips=1, overrides=[
        "validation.validation_prompt=''", "train.learning_rate=1e-2", "train.lora_type='lycoris'",
        f"train.lycoris_config='{options}'", "train.checkpoint_step_interval=0"])
    assert cli(["train", "--config", str(config)]).exit_code == 0
    source = config.parent / "output" / "pytorch_lora_weights.safetensors"
    namings = PluginHost.build(["wan"]).lora_namings()
    model = WanTransformer3DModel.from_pretrained(str(tiny_model_dir("wan")), subfolder="transformer")
    tc = TrainSection(lora_type="lycoris", lycoris_config=options, lora_rank=4)
    adapter = Lycoris(model, tc, ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"])
    [line] = init_from_file(AdapterSet([(Expert("denoiser", model), adapter)]), source, 4, 4.0, namings)
    assert "(comfyui layout, lycoris)" in line and "20 of the 20" in line
    expected = read_adapter(source, namings).weights.tensors
    got = adapter.weights().tensors
    assert sorted(k for k in expected if (got[k] - expected[k]).abs().max().item() > 0) == []
    with pytest.raises(ConfigError, match="is a lycoris adapter and this run trains lora: set lora_type = 'lycoris'"):
        init_from_file(_fresh(tiny_model_dir), source, 4, 8.0, namings)

"""What an exported Wan adapter file says about itself, and the model card that loads it into the right place."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open

from tuner.config import read_config_file
from tuner_wan.flavours import FLAVOURS


def _train(make_run, cli, name, *overrides, variant=None, steps=1):
    config = make_run(
        name=name, steps=steps, clips=1, variant=variant,
        overrides=["validation.validation_prompt=''", "train.learning_rate=1e-2", "train.checkpoint_step_interval=0", *overrides],
    )
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    return config.parent / read_config_file(config)["train"]["output_dir"]


def _card_code(out):
    card = (out / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", card, re.S).group(1)


def _deltas(transformer):
    """module path -> the LoRA delta (B @ A * scaling) each adapted layer of ``transformer`` adds."""
    out = {}
    for name, module in transformer.named_modules():
        if hasattr(module, "lora_A") and module.lora_A:
            adapter = next(iter(module.lora_A))
            delta = module.lora_B[adapter].weight @ module.lora_A[adapter].weight
            out[name] = delta * module.scaling[adapter]
    return out


def test_metadata_round_trips_names_the_expert_and_peft_and_diffusers_load_the_file(make_run, cli, tmp_path, tiny_model_dir):
    out = _train(
        make_run, cli, "low",
        "train.output_name='my-style'", "train.trigger_words=['sks', 'paper boat']",
        "train.lora_rank=4", "train.lora_alpha=8.0", "train.checkpoint_step_interval=1",
        variant="t2v-14b-2.2-low",
    )
    assert (out / "my-style.safetensors").is_file() and not (out / "pytorch_lora_weights.safetensors").exists()
    with safe_open(str(out / "my-style.safetensors"), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "8.0"
    assert meta["modelspec.sai_model_spec"] == "1.0.0" and meta["modelspec.architecture"] == "wan2.2-t2v-a14b/lora"
    assert meta["modelspec.trigger_phrase"] == "sks, paper boat" and meta["ss_output_name"] == "my-style"
    assert meta["tuner.flavour"] == "t2v-14b-2.2-low" and meta["tuner.expert"] == "transformer_2"
    assert json.loads(meta["tuner.load_kwargs"]) == {"load_into_transformer_2": True}
    assert meta["ss_steps"] == "1" and meta["modelspec.resolution"] == "64x64" and meta["tuner.layout"] == "comfyui"
    assert meta["modelspec.license"] == "apache-2.0"
    assert meta["modelspec.timestep_range"] == "0,875"  # the tiny T2V A14B's boundary: the low-noise range
    assert "ffn.net.2" in json.loads(meta["tuner.target_modules"])
    assert not any("/tmp" in value or str(tmp_path) in value for value in meta.values()), "no local path leaves the machine"
    assert meta["ss_sd_model_name"] == "model"  # a local base model by its folder name only
    # The checkpoint's copy says which step it is.
    with safe_open(str(out / "checkpoint-1" / "pytorch_lora_weights.safetensors"), framework="pt") as f:
        assert f.metadata()["ss_steps"] == "1"

    # peft builds the adapter from the stored config and takes the (diffusers-converted) weights as they are.
    from diffusers import WanPipeline, WanTransformer3DModel
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    stored = json.loads(meta["lora_adapter_metadata"])
    config = LoraConfig(**{k.removeprefix("transformer."): v for k, v in stored.items()})
    model_dir = tiny_model_dir("wan", "t2v-14b-2.2-low")
    transformer = WanTransformer3DModel.from_pretrained(str(model_dir), subfolder="transformer_2")
    inject_adapter_in_model(config, transformer)
    converted = WanPipeline.lora_state_dict(str(out / "my-style.safetensors"))
    incompatible = set_peft_model_state_dict(transformer, {k.removeprefix("transformer."): v for k, v in converted.items()})
    assert not incompatible.unexpected_keys
    a = tensors["diffusion_model.blocks.0.self_attn.q.lora_A.weight"]
    b = tensors["diffusion_model.blocks.0.self_attn.q.lora_B.weight"]
    torch.testing.assert_close(_deltas(transformer)["blocks.0.attn1.to_q"], b @ a * 2.0)  # alpha / rank = 2

    # The card's snippet, run as printed, puts the low-noise LoRA into transformer_2 and nothing into transformer.
    namespace: dict = {}
    exec(_card_code(out), namespace)
    pipe = namespace["pipe"]
    assert not _deltas(pipe.transformer)
    torch.testing.assert_close(_deltas(pipe.transformer_2)["blocks.0.attn1.to_q"], b @ a * 2.0)


def _expected_homes(out):
    """adapter file -> the pipeline component its metadata says it belongs in."""
    homes = {}
    for file in out.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata()
        homes[file.name] = "transformer_2" if json.loads(meta.get("tuner.load_kwargs", "{}")) else "transformer"
        assert meta["tuner.expert"] == homes[file.name] if "tuner.expert" in meta else homes[file.name] == "transformer"
    return homes


# One flavour per (version, task, expert): flavours that differ only in the hub repository (1.3B/14B, 480p/720p)
# share the tiny model's shape and the card's code path.
_DISTINCT = {(f.version, f.task, f.expert): name for name, f in reversed(FLAVOURS.items())}
CASES = [(name, []) for name in _DISTINCT.values()] + [("t2v-14b-2.2-high", ["wan.wan_train_both_experts=true"])]


@pytest.mark.parametrize(("flavour", "extra"), CASES, ids=[f"{n}{'-both' if e else ''}" for n, e in CASES])
def test_every_cards_snippet_loads_each_file_into_its_own_denoiser(make_run, cli, flavour, extra):
    out = _train(make_run, cli, flavour.replace(".", "_"), *extra, variant=flavour)
    homes = _expected_homes(out)
    namespace: dict = {}
    exec(_card_code(out), namespace)
    pipe = namespace["pipe"]
    loaded = {c for c in ("transformer", "transformer_2") if getattr(pipe, c, None) is not None and _deltas(getattr(pipe, c))}
    assert loaded == set(homes.values())
    assert len(homes) == (2 if extra else 1)

"""The default Wan adapter file loads everywhere: ComfyUI's key rules, its scales, and diffusers with identical output.

ComfyUI's rules are restated in `wan_comfyui_rules` (our words, from comfy/lora.py
and comfy/weight_adapter/); diffusers is the real library.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from wan_comfyui_rules import comfyui_deltas, comfyui_unloaded, comfyui_wan_weights

from tuner.train.adapters import Lycoris, PeftLora
from tuner.train.settings import TrainSection
from tuner_wan.export import original_name, save_adapter

I2V = "i2v-14b-2.1"  # the widest tiny shape: image embedder and image keys in cross-attention


def _transformer(tiny_model_dir, variant=None, subfolder="transformer"):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(str(tiny_model_dir("wan", variant)), subfolder=subfolder)


def _adapted_modules(model, kinds=(torch.nn.Linear,)):
    return [n for n, m in model.named_modules() if isinstance(m, kinds)]


def _lora(model, targets, seed=0):
    """A peft LoRA (rank 4, alpha 8: scale 2) on ``targets`` with every weight random, as training leaves it."""
    adapter = PeftLora(model, TrainSection(lora_rank=4, lora_alpha=8.0), targets)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return adapter


@pytest.mark.parametrize("variant", [None, I2V])
def test_restated_comfyui_names_are_the_ones_diffusers_single_file_loader_maps_onto_the_model(tiny_model_dir, variant):
    # The original Wan checkpoint names ComfyUI's model uses, checked against diffusers' own reader of
    # such checkpoints: renamed, they are exactly the model's weights.
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    model = _transformer(tiny_model_dir, variant)
    names = comfyui_wan_weights(dict(model.config))
    converted = convert_wan_transformer_to_diffusers({f"model.diffusion_model.{n}.weight": torch.empty(0) for n in names})
    assert set(converted) == {k for k in model.state_dict() if k.endswith(".weight")}


def test_every_adaptable_module_has_the_original_name_comfyui_maps(tiny_model_dir):
    model = _transformer(tiny_model_dir, I2V)
    names = comfyui_wan_weights(dict(model.config))
    modules = [n for n, m in model.named_modules() if isinstance(getattr(m, "weight", None), torch.nn.Parameter)]
    assert len(modules) > 30
    assert {original_name(m) for m in modules} == names


def test_default_lora_keys_follow_comfyuis_rules_and_carry_the_trained_deltas(tiny_model_dir, tmp_path):
    model = _transformer(tiny_model_dir, I2V)
    targets = _adapted_modules(model, (torch.nn.Linear, torch.nn.Conv3d))  # every layer, patch_embedding too
    adapter = _lora(model, targets)
    path = save_adapter(adapter.weights(), tmp_path / "a.safetensors", "comfyui")
    sd = load_file(path)
    assert all(k.startswith("diffusion_model.") for k in sd)
    assert not comfyui_unloaded(set(sd), comfyui_wan_weights(dict(model.config)))

    # ComfyUI's delta of each weight is the one peft applies in training: scale * B @ A.
    deltas = comfyui_deltas(sd)
    assert len(deltas) == len(targets)
    for name in targets:
        module = model.get_submodule(name)
        expected = module.scaling["default"] * (
            module.lora_B["default"].weight.flatten(1) @ module.lora_A["default"].weight.flatten(1)
        )
        torch.testing.assert_close(deltas[f"diffusion_model.{original_name(name)}"], expected, rtol=1e-5, atol=1e-7)
    # alpha where every reader applies it (block layers); folded in elsewhere (diffusers ignores it there).
    assert sd["diffusion_model.blocks.0.self_attn.q.alpha"].item() == 8.0
    assert "diffusion_model.head.head.alpha" not in sd and "diffusion_model.img_emb.proj.1.alpha" not in sd


def test_diffusers_layout_keys_load_nothing_in_comfyui(tiny_model_dir, tmp_path):
    model = _transformer(tiny_model_dir)
    adapter = _lora(model, ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"])
    sd = load_file(save_adapter(adapter.weights(), tmp_path / "d.safetensors", "diffusers"))
    assert comfyui_unloaded(set(sd), comfyui_wan_weights(dict(model.config))) == sorted(sd)


def _inputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    out = dict(
        hidden_states=torch.randn(1, cfg.in_channels, 2, 4, 4, generator=g),
        timestep=torch.tensor([400.0]),
        encoder_hidden_states=torch.randn(1, 8, cfg.text_dim, generator=g),
        return_dict=False,
    )
    if cfg.image_dim is not None:
        out["encoder_hidden_states_image"] = torch.randn(1, 4, cfg.image_dim, generator=g)
    return out


CASES = {
    "t2v WanPipeline": ("WanPipeline", None, "transformer"),
    "i2v WanImageToVideoPipeline": ("WanImageToVideoPipeline", I2V, "transformer"),
    "2.2 low-noise expert, load_into_transformer_2": ("WanImageToVideoPipeline", "i2v-14b-2.2-low", "transformer_2"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_default_file_loads_in_diffusers_with_the_output_of_the_diffusers_layout(tiny_model_dir, tmp_path, case):
    import diffusers

    pipeline, variant, component = CASES[case]
    trained = _transformer(tiny_model_dir, variant, component)
    # Every linear layer: block layers carry .alpha, the embedders and head have it folded in.
    targets = _adapted_modules(trained)
    weights = _lora(trained, targets).weights()
    files = {fmt: save_adapter(weights, tmp_path / f"{fmt}.safetensors", fmt) for fmt in ("comfyui", "diffusers")}

    outputs = {}
    for fmt, path in files.items():
        pipe = getattr(diffusers, pipeline).from_pretrained(str(tiny_model_dir("wan", variant)))
        module = getattr(pipe, component)
        inputs = _inputs(module)
        with torch.no_grad():
            base = module(**inputs)[0]
        pipe.load_lora_weights(str(tmp_path), weight_name=path.name, load_into_transformer_2=component == "transformer_2")
        with torch.no_grad():
            outputs[fmt] = module(**inputs)[0]
        assert (outputs[fmt] - base).abs().max() > 1e-3, f"the {fmt} file changed nothing"
    torch.testing.assert_close(outputs["comfyui"], outputs["diffusers"], rtol=1e-5, atol=1e-6)


LYCORIS = {
    # SimpleTuner's example: linear_dim 10000 is past every layer's size, so LoKr trains full factors (scale 1).
    "lokr full factors": ({"algo": "lokr", "linear_dim": 10000, "linear_alpha": 1, "factor": 4}, False),
    "lokr low-rank factor": ({"algo": "lokr", "linear_dim": 2, "linear_alpha": 1, "factor": 4}, True),
    "locon": ({"algo": "locon", "linear_dim": 4, "linear_alpha": 2}, True),
    "loha": ({"algo": "loha", "linear_dim": 4, "linear_alpha": 2}, True),
}


@pytest.mark.parametrize("case", list(LYCORIS))
def test_lycoris_comfyui_file_applies_the_trained_delta_at_its_scale(tiny_model_dir, tmp_path, case):
    spec, alpha_meaningful = LYCORIS[case]
    config = tmp_path / "lycoris.json"
    config.write_text(json.dumps(spec))
    model = _transformer(tiny_model_dir)
    targets = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
    adapter = Lycoris(model, TrainSection(lora_type="lycoris", lycoris_config=config), targets)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in adapter.params:  # LyCORIS starts with a zero factor: give every factor a value
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    sd = load_file(save_adapter(adapter.weights(), tmp_path / "l.safetensors", "comfyui"))
    assert not comfyui_unloaded(set(sd), comfyui_wan_weights(dict(model.config)))
    has_alpha = [k for k in sd if k.endswith(".alpha")]
    assert bool(has_alpha) == alpha_meaningful, has_alpha

    deltas = comfyui_deltas(sd)
    assert len(deltas) == len(adapter.module_names) == 20
    for name in adapter.module_names.values():
        layer = model.get_submodule(name)  # patched by LyCORIS: its forward adds the trained delta
        eye = torch.eye(layer.in_features)
        with torch.no_grad():
            trained = (layer(eye) - torch.nn.functional.linear(eye, layer.weight, layer.bias)).T
        torch.testing.assert_close(deltas[f"diffusion_model.{original_name(name)}"], trained, rtol=1e-4, atol=1e-6)

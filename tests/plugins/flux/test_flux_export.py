"""Flux adapter exports: kohya/ComfyUI names and numbers, checked against ComfyUI's own rules.

ComfyUI (comfy/lora.py, ``model_lora_keys_unet``) maps, for a Flux model, the diffusers
names ``transformer.<diffusers layer>`` (with ``.lora_A.weight`` / ``.lora_B.weight``, scale 1
without ``.alpha``) onto the original weight and rows `comfy_map` gives, and accepts ``lora_unet_<key>`` for
every ``diffusion_model.<key>.weight`` of the original (BFL) checkpoint, with
dots as underscores, and reads ``.lora_down.weight`` / ``.lora_up.weight`` /
``.alpha`` (scale alpha / rank, rank = rows of the down). Which original weight
holds each diffusers layer, and at which rows, is ComfyUI's ``flux_to_diffusers``
(comfy/utils.py); `comfy_map` below restates it for the layers LoRA adapts.
For LyCORIS, the same function maps ``lycoris_<diffusers key>`` names.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file


def comfy_map(double: int, single: int, hidden: int) -> dict[str, tuple[str, int, int]]:
    """diffusers weight key -> (original key, first row, rows), as ComfyUI's flux_to_diffusers lays them out."""
    out: dict[str, tuple[str, int, int]] = {}
    for i in range(double):
        d, o = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for j, p in enumerate("qkv"):
            out[f"{d}attn.to_{p}.weight"] = (f"{o}img_attn.qkv.weight", j * hidden, hidden)
            out[f"{d}attn.add_{p}_proj.weight"] = (f"{o}txt_attn.qkv.weight", j * hidden, hidden)
        for a, b in {
            "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj", "ff.net.0.proj": "img_mlp.0",
            "ff.net.2": "img_mlp.2", "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
            "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
        }.items():
            out[f"{d}{a}.weight"] = (f"{o}{b}.weight", 0, -1)
    for i in range(single):
        d, o = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for j, p in enumerate("qkv"):
            out[f"{d}attn.to_{p}.weight"] = (f"{o}linear1.weight", j * hidden, hidden)
        out[f"{d}proj_mlp.weight"] = (f"{o}linear1.weight", 3 * hidden, 4 * hidden)
        out[f"{d}proj_out.weight"] = (f"{o}linear2.weight", 0, -1)
        out[f"{d}norm.linear.weight"] = (f"{o}modulation.lin.weight", 0, -1)
    for a, b in {
        "proj_out": "final_layer.linear", "x_embedder": "img_in", "context_embedder": "txt_in",
        "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
        "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
        "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
        "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
        "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
        "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
        "norm_out.linear": "final_layer.adaLN_modulation.1",  # ComfyUI swaps its shift and scale halves
    }.items():
        out[f"{a}.weight"] = (f"{b}.weight", 0, -1)
    return out


def _train(make_run, cli, name, *overrides):
    config = make_run(
        plugin="flux", name=name, steps=3,
        overrides=["validation.validation_prompt=''", "train.learning_rate=1e-2", *overrides],
    )
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    return load_file(config.parent / "output" / "pytorch_lora_weights.safetensors")


def test_comfyui_keys_name_original_weights_and_carry_the_same_deltas(make_run, cli, tiny_model_dir):
    from diffusers import FluxTransformer2DModel

    # alpha != rank: each format must carry the scale its own way.
    peft = _train(make_run, cli, "d", "train.lora_rank=4", "train.lora_alpha=8.0")
    comfy = _train(make_run, cli, "c", "train.lora_rank=4", "train.lora_alpha=8.0", "train.lora_format='comfyui'")
    cfg = FluxTransformer2DModel.load_config(str(tiny_model_dir("flux")), subfolder="transformer")
    hidden = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    layout = comfy_map(cfg["num_layers"], cfg["num_single_layers"], hidden)
    originals = {orig for orig, _, _ in layout.values()}
    accepted = {"lora_unet_" + o[: -len(".weight")].replace(".", "_"): o for o in originals}

    modules = {k[len("transformer."):-len(".lora_A.weight")] for k in peft if k.endswith(".lora_A.weight")}
    assert modules and all(f"{m}.weight" in layout for m in modules), "every trained layer has a ComfyUI mapping"
    # The default file (lora_format = "auto") is the diffusers layout: every key is a LoRA half of a layer
    # ComfyUI maps as transformer.<layer>, so it loads there as it loads in FluxPipeline.
    assert set(peft) == {f"transformer.{m}.lora_{h}.weight" for m in modules for h in "AB"}
    prefixes = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in comfy}
    assert prefixes <= set(accepted), sorted(prefixes - set(accepted))
    for prefix in prefixes:
        assert {f"{prefix}.lora_down.weight", f"{prefix}.lora_up.weight", f"{prefix}.alpha"} <= set(comfy)

    # The delta ComfyUI adds to each original weight, sliced as flux_to_diffusers says, is the peft layer's delta
    # (the diffusers file has alpha / rank folded in).
    deltas = {}
    for prefix in prefixes:
        down, up = comfy[f"{prefix}.lora_down.weight"].float(), comfy[f"{prefix}.lora_up.weight"].float()
        deltas[accepted[prefix]] = comfy[f"{prefix}.alpha"].item() / down.shape[0] * (up @ down)
    for module in modules:
        orig, first, rows = layout[f"{module}.weight"]
        expected = peft[f"transformer.{module}.lora_B.weight"].float() @ peft[f"transformer.{module}.lora_A.weight"].float()
        got = deltas[orig][first : first + (rows if rows > 0 else deltas[orig].shape[0])]
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    # Rows of a fused weight whose layer was not adapted stay untouched.
    assert torch.count_nonzero(deltas["single_blocks.0.linear1.weight"]) > 0


def test_lycoris_comfyui_keys_are_the_names_comfyuis_flux_map_takes(make_run, cli, tiny_model_dir, tmp_path):
    from diffusers import FluxTransformer2DModel

    spec = tmp_path / "lokr.json"
    spec.write_text(json.dumps({"algo": "lokr", "multiplier": 1.0, "linear_dim": 10000, "linear_alpha": 1, "factor": 4}))
    comfy = _train(
        make_run, cli, "l", "train.lora_type='lycoris'", f"train.lycoris_config='{spec}'", "train.lora_format='comfyui'"
    )
    # Full-factor LoKr: LyCORIS stores alpha = linear_dim (10000) and scales by 1; the ComfyUI file leaves it out.
    assert not [k for k in comfy if k.endswith(".alpha")]
    cfg = FluxTransformer2DModel.load_config(str(tiny_model_dir("flux")), subfolder="transformer")
    layout = comfy_map(cfg["num_layers"], cfg["num_single_layers"], 1)
    accepted = {"lycoris_" + k[: -len(".weight")].replace(".", "_") for k in layout}
    prefixes = {k.rsplit(".", 1)[0] for k in comfy}
    assert "lycoris_transformer_blocks_0_attn_to_q" in prefixes
    assert "lycoris_single_transformer_blocks_1_proj_mlp" in prefixes
    assert prefixes <= accepted, sorted(prefixes - accepted)
    assert any(k.endswith("lokr_w2") and v.abs().sum() > 0 for k, v in comfy.items()), "LoKr trained"


def test_a_layer_without_an_original_name_is_refused():
    from tuner_flux.export import original_piece

    assert original_piece("single_transformer_blocks.3.proj_mlp") == ("single_blocks.3.linear1", 3)
    assert original_piece("transformer_blocks.0.attn.add_v_proj") == ("double_blocks.0.txt_attn.qkv", 2)
    with pytest.raises(ValueError, match="norm_out.linear"):
        original_piece("norm_out.linear")

"""Every Wan flavour at its real layer widths: trained in bf16 with each memory option a CPU runs, exported, loaded.

The transformers have the published widths (1.3B: dim 1536; TI2V-5B: 3072; the 14B
models: 5120, feed-forward 13824, 40 heads; text_dim 4096, image_dim 1280) with one or two
blocks and random weights, written in the diffusers layout by ``write_tiny_model(...,
real_width_blocks=N)`` and loaded by the run through the plugin's own loading code. The VAE,
the text and image encoders (tiny inside, but with the real output widths) and CREPA's
DINOv2 teacher stay tiny: they are not what these tests are about.

The options are spread over the flavours so that each runs once at a real width (a covering
matrix, not every combination), keeping the tier within CI's time:

========================  ======================================================================
1.3B T2V (2 blocks)       LoRA, gradient checkpointing, chunked feed-forward, TREAD, CREPA
TI2V 5B (1 block)         LoRA on an int8-quanto base, gradient checkpointing
2.1 I2V 14B (1 block)     LoKr (LyCORIS), chunked feed-forward at the 13824-wide layer
2.2 I2V A14B (1 + 1)      both experts in one run, LoRA on an int8-quanto base
========================  ======================================================================

Every run's adapter is checked against ComfyUI's key rules at these shapes (each delta has the
shape of the original weight it lands on) and loaded through diffusers' Wan pipeline.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from wan_comfyui_rules import comfyui_deltas, comfyui_unloaded, comfyui_wan_weights

from tuner.testing.runs import run_cli, run_output_dir, step_losses, write_run_folder
from tuner_wan.export import original_name

pytestmark = pytest.mark.truewidth

T2V, TI2V, I2V, A14B = None, "ti2v-5b-2.2", "i2v-14b-2.1", "i2v-14b-2.2-high"
BLOCKS = {T2V: 2, TI2V: 1, I2V: 1, A14B: 1}
# bf16 autocast on a bf16 base, 64x64 pixels x 5 frames: 32 tokens (8 for TI2V's 16x VAE).
COMMON = [
    "train.mixed_precision='bf16'", "train.learning_rate=1e-2", "data.num_frames=5",
    "validation.validation_prompt=''",
]  # fmt: skip


def _train(folder, model, variant, *overrides, steps=2, clips=1):
    config = write_run_folder(
        folder, model, plugin="wan", variant=variant, steps=steps, clips=clips, overrides=[*COMMON, *overrides]
    )
    result = run_cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    out = run_output_dir(config)
    losses = step_losses(out)
    assert len(losses) == steps and all(math.isfinite(x) for x in losses), losses
    return out, result.output + result.stderr


def _weight_shapes(model, subfolder="transformer"):
    """The original (ComfyUI) name -> shape of every weight of the written transformer, read without loading it."""
    shapes = {}
    for file in sorted((model / subfolder).glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                if key.endswith(".weight"):
                    shapes[original_name(key[: -len(".weight")])] = tuple(f.get_slice(key).get_shape())
    return shapes


def _check_comfyui(file, model, subfolder="transformer"):
    """The file loads whole in ComfyUI, and each delta it adds has the shape of the weight it lands on."""
    from diffusers import WanTransformer3DModel

    sd = load_file(file)
    config = dict(WanTransformer3DModel.load_config(str(model), subfolder=subfolder))
    assert not comfyui_unloaded(set(sd), comfyui_wan_weights(config))
    shapes = _weight_shapes(model, subfolder)
    deltas = comfyui_deltas(sd)
    assert deltas
    for prefix, delta in deltas.items():
        shape = shapes[prefix[len("diffusion_model.") :]]
        assert delta.shape == (shape[0], math.prod(shape[1:])), prefix
        assert torch.isfinite(delta).all() and delta.abs().sum() > 0, prefix
    return sd


def _inputs(config, tokens_side=4, text=8):
    g = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, config.in_channels, 2, tokens_side, tokens_side, generator=g),
        timestep=torch.tensor([950.0]),
        encoder_hidden_states=torch.randn(1, text, config.text_dim, generator=g),
        return_dict=False,
    )
    if config.image_dim is not None:
        inputs["encoder_hidden_states_image"] = torch.randn(1, 5, config.image_dim, generator=g)
    return {k: v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in inputs.items()}


def _outputs(transformers, inputs):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        return [t(**inputs)[0] for t in transformers]


@pytest.fixture(scope="module")
def t2v(tiny_model_dir):
    return tiny_model_dir("wan", T2V, BLOCKS[T2V])


def test_written_models_have_the_published_widths(tiny_model_dir):
    from diffusers import WanTransformer3DModel

    from tuner_wan.flavours import FLAVOURS
    from tuner_wan.profile import transformer_config

    dims = {T2V: 1536, TI2V: 3072, I2V: 5120}
    for variant, dim in dims.items():
        model = tiny_model_dir("wan", variant, BLOCKS[variant])
        config = dict(WanTransformer3DModel.load_config(str(model), subfolder="transformer"))
        published = transformer_config(FLAVOURS[variant or "t2v-480p-1.3b-2.1"])
        assert config["num_attention_heads"] * config["attention_head_dim"] == dim
        assert {k: config[k] for k in published if k != "num_layers"} == {k: v for k, v in published.items() if k != "num_layers"}
        assert config["num_layers"] == BLOCKS[variant]


def test_t2v_1_3b_trains_with_checkpointing_chunked_ff_tread_and_crepa_and_loads_in_the_pipeline(
    t2v, tiny_dino, tmp_path
):
    from diffusers import WanPipeline

    out, log = _train(
        tmp_path / "run", t2v, T2V,
        "plugins=['wan', 'offload', 'tread', 'crepa']", "train.gradient_checkpointing=true",
        "enable_chunked_feed_forward=true", "feed_forward_chunk_size=16",
        "tread_config={routes = [{selection_ratio = 0.5, start_layer_idx = 1, end_layer_idx = 1}]}",
        "crepa_enabled=true", "crepa_block_index=0", f"crepa_encoder='{tiny_dino}'", "crepa_encoder_image_size=28",
        steps=3,
    )  # fmt: skip
    assert "chunked feed-forward" in log and "TREAD" in log, log
    _check_comfyui(out / "pytorch_lora_weights.safetensors", t2v)

    pipe = WanPipeline.from_pretrained(str(t2v), torch_dtype=torch.bfloat16)
    inputs = _inputs(pipe.transformer.config)
    before = _outputs([pipe.transformer], inputs)
    pipe.load_lora_weights(str(out), weight_name="pytorch_lora_weights.safetensors")
    after = _outputs([pipe.transformer], inputs)
    assert not torch.equal(before[0], after[0])


def test_ti2v_5b_trains_on_an_int8_quanto_base_and_loads_in_the_pipeline(tiny_model_dir, tmp_path):
    from diffusers import WanPipeline

    model = tiny_model_dir("wan", TI2V, BLOCKS[TI2V])
    out, log = _train(
        tmp_path / "run", model, TI2V,
        "plugins=['wan', 'quantize']", "base_model_precision='int8-quanto'", "quantize_via='cpu'",
        "train.gradient_checkpointing=true",
    )  # fmt: skip
    assert "int8" in log, log
    _check_comfyui(out / "pytorch_lora_weights.safetensors", model)

    pipe = WanPipeline.from_pretrained(str(model), torch_dtype=torch.bfloat16)
    inputs = _inputs(pipe.transformer.config)
    before = _outputs([pipe.transformer], inputs)
    pipe.load_lora_weights(str(out), weight_name="pytorch_lora_weights.safetensors")
    assert not torch.equal(before[0], _outputs([pipe.transformer], inputs)[0])


def test_i2v_14b_trains_a_lokr_with_chunked_ff_whose_comfyui_file_loads_with_lycoris(tiny_model_dir, tmp_path):
    import json

    from diffusers import WanTransformer3DModel
    from lycoris import create_lycoris_from_weights

    model = tiny_model_dir("wan", I2V, BLOCKS[I2V])
    spec = tmp_path / "lokr.json"
    spec.write_text(json.dumps({"algo": "lokr", "multiplier": 1.0, "linear_dim": 10000, "linear_alpha": 1, "factor": 16}))
    out, log = _train(
        tmp_path / "run", model, I2V,
        "plugins=['wan', 'offload']", "enable_chunked_feed_forward=true", "feed_forward_chunk_size=16",
        "train.lora_type='lycoris'", f"train.lycoris_config='{spec}'",
    )  # fmt: skip
    sd = _check_comfyui(out / "pytorch_lora_weights.safetensors", model)
    assert "diffusion_model.blocks.0.ffn.0.lokr_w2" in sd

    # The same adapter in LyCORIS's own names loads onto the real-width transformer and changes its output.
    native = tmp_path / "native.safetensors"
    transformer = WanTransformer3DModel.from_pretrained(str(model), subfolder="transformer", torch_dtype=torch.bfloat16)
    blocks = [n for n, m in transformer.named_modules() if n.startswith("blocks.") and isinstance(m, torch.nn.Linear)]
    names = {original_name(n): "lycoris_" + n.replace(".", "_") for n in blocks}
    tensors = {}
    for key, value in sd.items():
        module, param = key[len("diffusion_model.") :].rsplit(".", 1)
        tensors[f"{names[module]}.{param}"] = value
        tensors[f"{names[module]}.alpha"] = torch.tensor(1.0)  # full-factor LoKr: scale 1, as ComfyUI reads it
    save_file(tensors, native)
    inputs = _inputs(transformer.config)
    before = _outputs([transformer], inputs)
    network, _ = create_lycoris_from_weights(1.0, str(native), transformer)
    network.apply_to()
    network.load_state_dict(tensors)
    assert not torch.equal(before[0], _outputs([transformer], inputs)[0])


def test_a14b_both_experts_train_on_an_int8_quanto_base_and_load_into_their_own_transformer(tiny_model_dir, tmp_path):
    from diffusers import WanImageToVideoPipeline

    model = tiny_model_dir("wan", A14B, BLOCKS[A14B])
    out, log = _train(
        tmp_path / "run", model, A14B,
        "plugins=['wan', 'quantize']", "base_model_precision='int8-quanto'", "quantize_via='cpu'",
        "wan.wan_train_both_experts=true", "train.train_batch_size=2",
        # Half the noise levels each, drawn evenly: both experts get samples within the two steps.
        "wan.wan_boundary_ratio=0.5", "train.flow_timestep_sampling='uniform'", "train.flow_schedule_shift=1.0",
        clips=2,
    )  # fmt: skip
    files = {label: out / f"pytorch_lora_weights_{label}.safetensors" for label in ("high_noise", "low_noise")}
    _check_comfyui(files["high_noise"], model, "transformer")
    _check_comfyui(files["low_noise"], model, "transformer_2")

    pipe = WanImageToVideoPipeline.from_pretrained(str(model), torch_dtype=torch.bfloat16)
    experts = [pipe.transformer, pipe.transformer_2]
    inputs = _inputs(pipe.transformer.config)
    before = _outputs(experts, inputs)
    pipe.load_lora_weights(str(out), weight_name=files["high_noise"].name, adapter_name="high")
    pipe.load_lora_weights(str(out), weight_name=files["low_noise"].name, adapter_name="low", load_into_transformer_2=True)
    after = _outputs(experts, inputs)
    assert not torch.equal(before[0], after[0]) and not torch.equal(before[1], after[1])

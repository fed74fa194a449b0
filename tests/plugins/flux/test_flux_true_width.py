"""FLUX.1 dev at its real layer widths: trained in bf16 on an int8-quanto base with TREAD and checkpointing,
exported in ComfyUI's layout and loaded by FluxPipeline.

The transformer has the published widths (24 heads of 128 = 3072, T5 width 4096, CLIP width
768, 64 input channels) with one double and one single block and random weights, written in
the diffusers layout by ``write_tiny_model(..., real_width_blocks=1)`` and loaded by the run
through the plugin's own loading code. The VAE and both text encoders stay tiny inside (with
the real output widths): they are not what this test is about.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from test_flux_export import comfy_map

from tuner.testing.runs import run_cli, run_output_dir, step_losses, write_run_folder

pytestmark = pytest.mark.truewidth


def test_flux_dev_trains_with_quanto_tread_and_checkpointing_and_its_comfyui_file_loads(tiny_model_dir, tmp_path):
    from diffusers import FluxPipeline

    model = tiny_model_dir("flux", None, 1)
    config = write_run_folder(
        tmp_path / "run", model, plugin="flux", steps=2, clips=1,
        overrides=[
            "plugins=['flux', 'quantize', 'tread']", "base_model_precision='int8-quanto'", "quantize_via='cpu'",
            "tread_config={routes = [{selection_ratio = 0.5, start_layer_idx = 1, end_layer_idx = 1}]}",
            "train.gradient_checkpointing=true", "train.mixed_precision='bf16'", "train.learning_rate=1e-2",
            "train.lora_format='comfyui'", "validation.validation_prompt=''",
        ],
    )  # fmt: skip
    result = run_cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    out = run_output_dir(config)
    losses = step_losses(out)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses

    # ComfyUI's rules at 3072 wide: every prefix names an original weight, and each delta fits the rows
    # flux_to_diffusers gives that layer inside the fused original weight.
    pipe = FluxPipeline.from_pretrained(str(model), torch_dtype=torch.bfloat16)
    cfg = pipe.transformer.config
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    assert hidden == 3072 and cfg.joint_attention_dim == 4096 and cfg.in_channels == 64
    layout = comfy_map(cfg.num_layers, cfg.num_single_layers, hidden)
    shapes = dict(pipe.transformer.state_dict().items())
    accepted = {"lora_unet_" + orig[: -len(".weight")].replace(".", "_"): orig for orig, _, _ in layout.values()}
    sd = load_file(out / "pytorch_lora_weights.safetensors")
    prefixes = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in sd}
    assert prefixes and prefixes <= set(accepted), sorted(prefixes - set(accepted))
    rows = {}
    for diffusers_key, (orig, first, n) in layout.items():
        rows.setdefault(orig, 0)
        rows[orig] += shapes[diffusers_key].shape[0] if n < 0 else n
    for prefix in prefixes:
        down, up = sd[f"{prefix}.lora_down.weight"], sd[f"{prefix}.lora_up.weight"]
        orig = accepted[prefix]
        assert up.shape[0] == rows[orig] and down.shape[0] == up.shape[1], prefix

    # FluxPipeline reads the same file (kohya names) and the transformer's output changes.
    g = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, 16, cfg.in_channels, generator=g),
        encoder_hidden_states=torch.randn(1, 8, cfg.joint_attention_dim, generator=g),
        pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g),
        timestep=torch.tensor([0.5]),
        guidance=torch.tensor([3.5]),
        img_ids=torch.zeros(16, 3),
        txt_ids=torch.zeros(8, 3),
        return_dict=False,
    )
    inputs = {k: v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and k not in ("img_ids", "txt_ids") else v
              for k, v in inputs.items()}  # fmt: skip

    def output():
        with torch.no_grad():
            return pipe.transformer(**inputs)[0]

    before = output()
    pipe.load_lora_weights(str(out), weight_name="pytorch_lora_weights.safetensors")
    assert not torch.equal(before, output())

"""The memory estimate `tuner configure` prints, held to what real-width Wan blocks save and weigh on a CPU.

The models are the true-width tier's (written once per session by ``tiny_model_dir(...,
real_width_blocks=N)`` and loaded by diffusers in bf16, as a run loads them): Wan 2.1 1.3B
(dim 1536, 2 blocks), Wan 2.2 TI2V 5B (dim 3072) and a Wan 2.2 A14B expert (dim 5120, ffn
13824, 40 heads), one block each, with a float32 LoRA of rank 8 under bf16 autocast. Every
tensor autograd saves for the backward pass is counted by torch's saved-tensor hooks
(`tuner.setup.measure.saved_activation_bytes`); weights are counted as stored.
"""

from __future__ import annotations

import pytest
import torch

from tuner.plugins import PluginHost
from tuner.setup.estimate import WEIGHT_BYTES, Workload, block_bytes, estimate, forward_saved_bytes
from tuner.setup.measure import saved_activation_bytes

pytestmark = pytest.mark.truewidth

# size -> (flavour, blocks): the models test_wan_true_width.py trains, so a session writes each once.
SHAPES = {"1.3B": (None, 2), "5B": ("ti2v-5b-2.2", 1), "14B": ("i2v-14b-2.2-high", 1)}
LATENT_FRAMES, SIDE, TEXT, RANK = 3, 16, 32, 8  # 3 x 8 x 8 = 192 tokens


@pytest.fixture(scope="module")
def profile():
    return PluginHost.build(["wan"]).describe_family("wan")


def _load(tiny_model_dir, size):
    from diffusers import WanTransformer3DModel

    variant, blocks = SHAPES[size]
    folder = tiny_model_dir("wan", variant, blocks)
    return WanTransformer3DModel.from_pretrained(str(folder), subfolder="transformer", torch_dtype=torch.bfloat16)


def _stored_bytes(module):
    # The state dict holds what is stored: a quantized weight as its int8 data and its scales.
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _with_lora(model):
    from peft import LoraConfig, inject_adapter_in_model

    from tuner_wan.plugin import LORA_TARGETS

    model.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=LORA_TARGETS), model)
    for p in model.parameters():
        if p.requires_grad:  # the run's rule: the adapter is float32 whatever the base
            p.data = p.data.float()
    return model.train()


@pytest.mark.parametrize("size", list(SHAPES))
def test_weights_as_stored_match_the_estimate_in_bf16_and_int8(tiny_model_dir, profile, size):
    from tuner_quantize.quanto import quantize_weights

    model = _load(tiny_model_dir, size)
    shape = profile.shape(dict(model.config))
    work = Workload(tokens=1, text_tokens=TEXT, rank=RANK)
    # diffusers keeps a few modules float32 (time_embedder, norms, modulation tables: 55 MB at 14B width,
    # 12% of one block's outside weights but 0.2% of a whole 14B model): the estimate's 2 bytes plus those.
    kept_fp32 = sum(t.numel() * 2 for t in model.state_dict().values() if t.dtype == torch.float32)
    assert kept_fp32 < 0.003 * 2 * profile.shape({**model.config, "num_layers": 40}).parameters
    assert _stored_bytes(model.blocks) == pytest.approx(shape.block_parameters * 2, rel=0.002)
    assert estimate(shape, work).weights + kept_fp32 == pytest.approx(_stored_bytes(model), rel=0.001)

    # int8-quanto packs the blocks' linear layers only, as the quantize plugin does: 1 byte a weight there
    # (plus a scale per output row), everything outside unchanged at 2 bytes.
    outside = _stored_bytes(model) - _stored_bytes(model.blocks)
    quantize_weights(model, "int8-quanto", include=["blocks.*"], where=torch.device("cpu"), option="base_model_precision")
    assert _stored_bytes(model) - _stored_bytes(model.blocks) == outside
    assert _stored_bytes(model.blocks) == pytest.approx(shape.block_parameters * WEIGHT_BYTES["int8-quanto"], rel=0.01)
    int8 = estimate(shape, work, precision="int8-quanto").weights
    assert int8 + kept_fp32 == pytest.approx(_stored_bytes(model), rel=0.01)


@pytest.mark.parametrize("size", list(SHAPES))
def test_activation_bytes_per_token_per_block_and_whole_match_the_estimate(tiny_model_dir, profile, size):
    model = _with_lora(_load(tiny_model_dir, size))
    shape = profile.shape(dict(model.config))
    work = Workload(tokens=LATENT_FRAMES * (SIDE // 2) ** 2, text_tokens=TEXT, rank=RANK)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, model.config.in_channels, LATENT_FRAMES, SIDE, SIDE, generator=g, dtype=torch.bfloat16)
    text = torch.randn(1, TEXT, model.config.text_dim, generator=g, dtype=torch.bfloat16)

    def forward() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(latents, torch.tensor([500]), text, return_dict=False)[0]

    # One block alone, on the inputs the model hands it: the estimate's per-block bytes.
    seen = {}
    hook = model.blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault("args", args))
    with torch.no_grad():
        forward()
    hook.remove()

    def block() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model.blocks[0](*seen["args"])

    per_block = saved_activation_bytes(block, model.parameters())
    # The rotary tables (cos and sin, float32, head_dim wide) are computed once and shared by every block: the
    # estimate counts them outside the blocks.
    rotary = work.tokens * 2 * model.config.attention_head_dim * 4
    assert block_bytes(shape, work) + rotary == pytest.approx(per_block, rel=0.02), f"{per_block / work.tokens:.0f} B/token"

    # The whole model, without and with gradient checkpointing (each block then keeps only its input).
    assert forward_saved_bytes(shape, work, False) == pytest.approx(saved_activation_bytes(forward, model.parameters()), rel=0.05)
    model.enable_gradient_checkpointing()
    assert forward_saved_bytes(shape, work, True) == pytest.approx(saved_activation_bytes(forward, model.parameters()), rel=0.05)

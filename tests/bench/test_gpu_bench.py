"""bench/gpu.py's CPU side: the refusal, the plan of rows, the FLOP count, the table and the JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import gpu  # noqa: E402
import gpu_plan  # noqa: E402
from gpu_plan import MODELS, Result  # noqa: E402

ALL = {"flash_attn", "sageattention", "optimum.quanto"}


def test_without_cuda_it_refuses_in_one_line():
    done = subprocess.run([sys.executable, str(BENCH / "gpu.py")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stdout.strip().splitlines() == [gpu_plan.refusal(False)]
    assert "CUDA" in done.stdout and done.stderr == ""


@pytest.mark.parametrize(
    ("name", "peak"),
    [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
     ("NVIDIA GeForce RTX 4090", 165.0), ("NVIDIA L40S", 362.0), ("NVIDIA L4", 121.0), ("Some New Card", None)],
)
def test_the_peak_is_found_by_the_longest_matching_name(name, peak):
    assert gpu_plan.peak_tflops(name) == peak
    assert gpu_plan.peak_tflops(name, override=500.0) == 500.0


def test_the_plan_fits_the_time_budget_and_says_why_a_row_is_skipped():
    rows = gpu_plan.plan(ALL)
    assert sum(r.budget_s for r in rows if not r.skip) + gpu_plan.WRITE_S <= gpu_plan.TOTAL_S <= 8 * 60
    names = " ".join(r.name for r in rows)
    for option in ("baseline", "checkpointing", "group offload", "block swap", "int8-quanto", "chunked", "TREAD",
                   "sdpa", "flash-attn", "sageattention", "torch.compile", "bare loop", "14B"):
        assert option in names
    # SageAttention has no backward pass in tuner: said, not measured
    assert "validation only" in next(r.skip for r in rows if "sage" in r.name)
    bare = {r.name: r.skip for r in gpu_plan.plan(set())}
    assert bare["int8-quanto base"] == "optimum.quanto is not installed"
    assert bare["attention flash-attn"] == "flash_attn is not installed"
    assert gpu_plan.row_budget(rows[0], 0) == rows[0].budget_s
    assert gpu_plan.row_budget(rows[0], gpu_plan.TOTAL_S - 15) == 15
    assert gpu_plan.row_budget(rows[0], gpu_plan.TOTAL_S - 5) is None


def test_every_rows_settings_are_a_valid_tuner_config(tmp_path):
    """Each row's sections resolve through the real plugins (option names, and combinations they refuse)."""
    from tuner.config import resolve_config
    from tuner.plugins import PluginHost

    (tmp_path / "clips").mkdir()
    for row in gpu_plan.plan(ALL):
        if row.skip or row.bare:
            continue
        raw = gpu.merged(gpu.base_config(tmp_path, row.model), row.settings)
        host = PluginHost.build(gpu.plugins(row.settings))
        config = resolve_config(raw, host)
        assert config.train.gradient_checkpointing == row.checkpointing, row.name


def test_the_14b_depth_is_what_the_estimate_fits():
    from tuner_wan.profile import wan_shape

    shape = wan_shape(gpu.transformer_config("14b", 4))  # block sizes are per block: 4 deep is enough
    tokens = MODELS["14b"].tokens
    # 0.7 GiB of bf16 weights and ~4 GiB of saved activations per block at 14,040 tokens
    assert [gpu_plan.fitting_blocks(shape, tokens, gib * gpu_plan.GiB, 4) for gib in (8, 24, 48)] == [1, 3, 4]


def test_step_flops_match_torchs_flop_counter_on_a_real_width_block():
    """The counted forward of one real-width 1.3B block at 14,040 tokens (on the meta device: no memory, no
    time), split into linear layers and attention, gives the training FLOPs the bench divides by: linear x 2
    (frozen weights: input gradients only) + attention x 3."""
    import torch
    from diffusers import WanTransformer3DModel
    from torch.utils.flop_counter import FlopCounterMode

    from tuner_wan.profile import wan_shape

    config = gpu.transformer_config("1.3b", 1)
    spec = MODELS["1.3b"]
    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(config)
        latents = torch.randn(1, 16, (spec.frames - 1) // 4 + 1, spec.height // 8, spec.width // 8)
        text = torch.randn(1, gpu_plan.TEXT_TOKENS, config["text_dim"])
    with FlopCounterMode(display=False) as counter:
        model(hidden_states=latents, timestep=torch.tensor([500.0], device="meta"), encoder_hidden_states=text,
              return_dict=False)
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    attention = sum(v for k, v in counts.items() if "bmm" in k or "attention" in k)
    linear = counter.get_total_flops() - attention
    counted = 2 * linear + 3 * attention
    planned = gpu_plan.step_flops(wan_shape(config), 1, spec.tokens)
    assert planned == pytest.approx(counted, rel=0.03)


def test_table_and_json_carry_the_figures(tmp_path):
    rows = [
        gpu_plan.finish(Result("baseline bf16", "1.3b", 30, 14040), [0.5, 0.4, 0.6], 200e12, 989.0, 30 * gpu_plan.GiB),
        gpu_plan.finish(Result("bare loop (no tuner)", "1.3b", 30, 14040), [0.4, 0.4], 200e12, 989.0, 29 * gpu_plan.GiB),
        Result("attention flash-attn", "1.3b", 30, 14040, note="flash_attn is not installed"),
    ]
    assert rows[0].step_s == 0.5 and rows[0].tokens_per_s == pytest.approx(28080)
    assert rows[0].mfu == pytest.approx(200e12 / 0.5 / 1e12 / 989.0)
    text = gpu_plan.table(rows, "NVIDIA H100 80GB HBM3 (79 GiB)", 989.0)
    assert "| baseline bf16 | 1.3b | 30 | 14040 | 0.500 | 28080 | 400 | 40.4% | 30.0 |  |" in text
    assert "| attention flash-attn | 1.3b | 30 | 14040 | n/a | n/a | n/a | n/a | n/a | flash_attn is not installed |" in text
    assert "tuner / bare loop (1.3B, baseline): 1.250" in text
    out = tmp_path / "gpu.json"
    gpu_plan.write_json(out, rows, "H100", 989.0, {"seconds": 1.0})
    data = json.loads(out.read_text())
    assert data["tuner_bare_ratio"] == pytest.approx(1.25) and data["peak_bf16_tflops"] == 989.0
    assert [r["name"] for r in data["rows"]] == [r.name for r in rows] and data["rows"][2]["step_s"] is None
    card = gpu_plan.finish(Result("baseline bf16", "1.3b", 30, 14040), [0.5], 200e12, None, gpu_plan.GiB)
    unknown = gpu_plan.table([card], "Some New Card", None)
    assert "peak n/a" in unknown and "| 400 | n/a | 1.0 |" in unknown

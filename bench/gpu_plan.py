"""The CPU-side logic of bench/gpu.py: which rows to run, their FLOPs, the card's peak, the table and the JSON.

Nothing here needs a GPU (or imports torch at import time), so the suite tests it on CPU
(tests/bench/test_gpu_bench.py); bench/gpu.py runs the rows on a CUDA card.

Model FLOPs per step come from the estimate `tuner configure` prints
(`tuner.setup.estimate.training_flops`, without checkpointing: MFU counts the model's
work, not a recomputed forward): the frozen linear layers' forward x 2 (the backward
computes input gradients only), attention x 3, the adapter x 3. MFU is those FLOPs over
the measured step time over the card's dense bf16 peak.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PEAK_BF16_TFLOPS",
    "Model",
    "Row",
    "Result",
    "MODELS",
    "peak_tflops",
    "refusal",
    "plan",
    "fitting_blocks",
    "step_flops",
    "finish",
    "table",
    "write_json",
]

# Dense (no sparsity) bf16 tensor-core peaks with float32 accumulation, TFLOP/s, from the vendors' data
# sheets. Matched against torch.cuda.get_device_name() by substring, the longest key first (so "H100 PCIe"
# wins over "H100"). Unknown cards print MFU as n/a unless --peak-tflops names the peak.
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,  # SXM
    "H200": 989.0,
    "GH200": 989.0,
    "H20": 148.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 6000 Ada": 364.0,
    "RTX A6000": 155.0,
    "RTX 5090": 209.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
}
GiB = 1024**3
# The share of the card the 14B baseline may plan to use (the estimate is not exact: leave headroom).
FIT_SHARE = 0.8
# The whole bench's wall-clock limit (the issue's 8 minutes, less a margin); writing the models is allowed
# WRITE_S of it; rows run within what is left, each within its own budget.
TOTAL_S = 470.0
WRITE_S = 50.0


@dataclass(frozen=True)
class Model:
    """A real-width Wan transformer the bench writes with random weights (no download).

    :ivar key: short name in the table.
    :ivar flavour_config: `tuner_wan.profile.TRANSFORMERS` key whose widths are used.
    :ivar frames, height, width: one sample's pixels; tokens = latent frames x (h/16) x (w/16).
    :ivar max_blocks: the depth cap (the real model's depth); 14B: fewer, as many as fit.
    """

    key: str
    flavour_config: str
    frames: int
    height: int
    width: int
    max_blocks: int

    @property
    def tokens(self) -> int:
        return ((self.frames - 1) // 4 + 1) * (self.height // 16) * (self.width // 16)


MODELS = {
    "1.3b": Model("1.3b", "t2v-1.3b", 33, 480, 832, 30),
    "14b": Model("14b", "t2v-14b", 33, 480, 832, 40),
}
TEXT_TOKENS = 512  # Wan pads every prompt to 512 UMT5 tokens
RANK = 16


@dataclass(frozen=True)
class Row:
    """One measurement: a model, the config sections that turn the option on, and a time budget.

    :ivar settings: config sections merged over the base run (``{"offload": {...}}``).
    :ivar compile_blocks: compile each repeated block with ``torch.compile`` (regional
        compilation: not a tuner option; the bench does it through a prepare_model hook).
    :ivar bare: the bare accelerate + diffusers + peft loop of bench/overhead.py instead of tuner.
    :ivar needs: a Python package the row needs; without it the row is skipped with that reason.
    :ivar skip: why the row is not run (printed in the table instead of figures).
    :ivar budget_s: the row's wall-clock limit (model load, warm-up, compilation, steps).
    """

    name: str
    model: str
    settings: dict[str, Any] = field(default_factory=dict)
    steps: int = 4
    checkpointing: bool = False
    compile_blocks: bool = False
    bare: bool = False
    needs: str | None = None
    skip: str | None = None
    budget_s: float = 20.0


@dataclass
class Result:
    """A row's figures (``None`` where not measured) and, when it did not run, why."""

    name: str
    model: str
    blocks: int
    tokens: int
    step_s: float | None = None
    tokens_per_s: float | None = None
    tflops: float | None = None
    mfu: float | None = None
    peak_gib: float | None = None
    note: str = ""


def peak_tflops(device_name: str, override: float | None = None) -> float | None:
    """The card's dense bf16 peak, from `PEAK_BF16_TFLOPS` (longest matching name first), or ``None``."""
    if override:
        return override
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return PEAK_BF16_TFLOPS[key]
    return None


def refusal(cuda_available: bool) -> str | None:
    """The one line bench/gpu.py prints and exits with when there is no CUDA device, else ``None``."""
    if cuda_available:
        return None
    return "bench/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False here); run it on a CUDA machine"


def fitting_blocks(shape: Any, tokens: int, memory_bytes: float, max_blocks: int) -> int:
    """How many blocks of ``shape`` fit the baseline (bf16 weights, no checkpointing) in `FIT_SHARE` of the card.

    Uses the estimate `tuner configure` prints, block by block; at least 1.
    """
    from dataclasses import replace

    from tuner.setup.estimate import Workload, estimate

    work = Workload(tokens, TEXT_TOKENS, RANK)
    per_block = shape.block_parameters // shape.blocks
    best = 1
    for blocks in range(1, max_blocks + 1):
        cut = replace(shape, blocks=blocks, parameters=shape.parameters - (shape.blocks - blocks) * per_block,
                      block_parameters=per_block * blocks,
                      linear_macs_per_token=shape.linear_macs_per_token * blocks // shape.blocks,
                      lora_io=shape.lora_io * blocks // shape.blocks)
        if estimate(cut, work, checkpointing=False).total > FIT_SHARE * memory_bytes:
            break
        best = blocks
    return best


def step_flops(shape: Any, blocks: int, tokens: int) -> float:
    """Model FLOPs of one training step of a ``blocks``-deep cut of ``shape`` (`training_flops`, no recompute)."""
    from dataclasses import replace

    from tuner.setup.estimate import Workload, training_flops

    cut = replace(shape, blocks=blocks, linear_macs_per_token=shape.linear_macs_per_token * blocks // shape.blocks,
                  lora_io=shape.lora_io * blocks // shape.blocks)
    return training_flops(cut, Workload(tokens, TEXT_TOKENS, RANK), checkpointing=False)


def plan(installed: set[str]) -> list[Row]:
    """Every row, in the order run, each with its budget (with `WRITE_S` they add up to `TOTAL_S` at most).

    :param installed: optional packages present (``flash_attn``, ``sageattention``, ``optimum.quanto``).
    """
    ckpt = {"train": {"gradient_checkpointing": True}}
    rows = [
        Row("baseline bf16", "1.3b", budget_s=35),  # the first row also builds the caches
        Row("bare loop (no tuner)", "1.3b", bare=True),
        Row("gradient checkpointing", "1.3b", ckpt, checkpointing=True),
        Row("group offload (CUDA stream)", "1.3b",
            {**ckpt, "offload": {"enable_group_offload": True, "group_offload_use_stream": True}}, checkpointing=True),
        Row("block swap (10 blocks)", "1.3b", {**ckpt, "offload": {"blocks_to_swap": 10}}, checkpointing=True),
        Row("int8-quanto base", "1.3b", {"quantize": {"base_model_precision": "int8-quanto"}}, needs="optimum.quanto"),
        Row("chunked feed-forward (4096)", "1.3b",
            {"offload": {"enable_chunked_feed_forward": True, "feed_forward_chunk_size": 4096}}),
        Row("TREAD (50% of tokens, blocks 2..-2)", "1.3b",
            {"tread": {"tread_config": {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 2, "end_layer_idx": -2}]}}}),
        Row("attention sdpa-flash", "1.3b", {"attention": {"attention_mechanism": "sdpa-flash"}}),
        Row("attention flash-attn", "1.3b", {"attention": {"attention_mechanism": "flash-attn"}}, needs="flash_attn"),
        Row("attention sageattention", "1.3b", needs="sageattention",
            skip="tuner uses SageAttention for validation only (it has no backward pass); training rows use SDPA"),
        Row("regional torch.compile (blocks)", "1.3b", compile_blocks=True, budget_s=60),
        Row("14B expert baseline bf16", "14b", budget_s=35),
        Row("14B expert gradient checkpointing", "14b", ckpt, checkpointing=True, budget_s=35),
        Row("14B expert int8-quanto", "14b", {"quantize": {"base_model_precision": "int8-quanto"}},
            needs="optimum.quanto", budget_s=35),
        Row("14B expert group offload (CUDA stream)", "14b",
            {**ckpt, "offload": {"enable_group_offload": True, "group_offload_use_stream": True}},
            checkpointing=True, budget_s=35),
    ]
    out = []
    for row in rows:
        if row.skip is None and row.needs and row.needs not in installed:
            row = Row(**{**asdict(row), "skip": f"{row.needs} is not installed"})
        out.append(row)
    return out


def row_budget(row: Row, elapsed: float) -> float | None:
    """The seconds row ``row`` may take when the bench has run ``elapsed`` seconds; ``None``: too few are left."""
    left = TOTAL_S - elapsed
    return min(row.budget_s, left) if left >= 10 else None


def finish(result: Result, times: list[float], flops: float, peak: float | None, peak_bytes: int) -> Result:
    """Fill ``result``'s figures from its counted step times (median), FLOPs per step and peak memory."""
    step = sorted(times)[len(times) // 2]
    result.step_s = step
    result.tokens_per_s = result.tokens / step
    result.tflops = flops / step / 1e12
    result.mfu = result.tflops / peak if peak else None
    result.peak_gib = peak_bytes / GiB
    return result


def _cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def table(results: list[Result], device: str, peak: float | None) -> str:
    """The printed table: one line per row, a note where a row did not run."""
    head = f"{device}: bf16 dense peak {_cell(peak, '.0f')} TFLOP/s"
    lines = [head, "", "| row | model | blocks | tokens | step s | tokens/s | TFLOP/s | MFU | peak GiB | note |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        mfu = None if r.mfu is None else 100 * r.mfu
        lines.append(
            f"| {r.name} | {r.model} | {r.blocks} | {r.tokens} | {_cell(r.step_s, '.3f')} | {_cell(r.tokens_per_s, '.0f')}"
            f" | {_cell(r.tflops, '.0f')} | {_cell(mfu, '.1f')}{'%' if mfu is not None else ''}"
            f" | {_cell(r.peak_gib, '.1f')} | {r.note} |"
        )
    ratio = tuner_bare_ratio(results)
    if ratio is not None:
        lines += ["", f"tuner / bare loop (1.3B, baseline): {ratio:.3f} step-time ratio"]
    return "\n".join(lines)


def tuner_bare_ratio(results: list[Result]) -> float | None:
    """The baseline row's step time over the bare loop's, when both ran."""
    by = {r.name: r for r in results}
    tuner, bare = by.get("baseline bf16"), by.get("bare loop (no tuner)")
    if tuner is None or bare is None or tuner.step_s is None or bare.step_s is None:
        return None
    return tuner.step_s / bare.step_s


def write_json(path: Path, results: list[Result], device: str, peak: float | None, extra: dict[str, Any]) -> None:
    """The figures as JSON: the device, its peak, the tuner/bare ratio and one object per row."""
    data = {
        "device": device,
        "peak_bf16_tflops": peak,
        "tuner_bare_ratio": tuner_bare_ratio(results),
        **extra,
        "rows": [asdict(r) for r in results],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")

"""Framework overhead: tuner's training step against a bare accelerate + diffusers + peft loop.

    python bench/overhead.py            # mid-size and tiny ratios + tiny demo figures
    python bench/overhead.py --quick    # fewer steps
    python bench/overhead.py --flux     # plus the Flux row (`flux_overhead`)
    python bench/overhead.py --row i2v --rounds 5   # one row, five rounds (ratios' range and IQR)

For two sizes of the Wan transformer (random init) both loops train the same
model with LoRA on the same modules, AdamW and the same cached batch shape,
alternating in rounds so machine noise hits both alike:

* mid-size: 3 blocks, dim 256, 1280 tokens, LoRA r16 (target ratio <= 1.02);
* image-to-video: the same transformer in the Wan 2.1 I2V shape (36 input
  channels, CLIP image tokens), conditioning from the cache (target <= 1.02);
* tiny: the demo model (2 blocks, dim 32, 80 tokens, LoRA r8), where framework
  overhead weighs most (target ratio <= 1.05).

The image-to-video row's extra time outside forward/backward/optimizer was looked for
(issue 23: 30.7 ms a step on another machine): torch's profiler over the counted steps
shows the same operators on the same shapes in both loops (the I2V transformer's own
image cross-attention makes its forward ~12% dearer than the T2V row's, in both loops),
and ``bench/step_breakdown.py --row i2v`` on one thread puts tuner's own part at ~6 ms a
step against ~4 ms for the T2V row, the difference mostly reading a cache entry twice as
large (the conditioning latents live beside the clip's latents), which also turns on the
batch read-ahead thread (`READ_AHEAD_ABOVE_S`). Nothing tuner does per step accounts for
30 ms; each row now prints its rounds' ratios and their range, so a ratio whose rounds
straddle the target says "noise: measure again on an idle machine".

Then, with ``--flux`` / ``--only-flux``, a mid-size Flux-shaped model (2 double +
2 single blocks, dim 256, 256 packed image tokens, guidance embedding, LoRA r16 on
the plugin's targets) against a bare diffusers + peft Flux loop (target <= 1.02).

Each loop runs one warm-up step, then the counted ones (as many in both). Printed
per size: median step times, their ratio in wall time and in CPU time (this
process's, all threads: on a machine other jobs share, wall time also counts the
moments they held the cores, so read the CPU ratio there), the time per step tuner
spends outside forward/backward/optimizer (tuner's median minus the bare loop's,
whose step is nothing else), each round's own ratios (tuner's median over the bare
loop's of the same round) with their range, so one run shows whether a ratio
above its target is noise, and voluntary context switches per step of each loop
(``getrusage().ru_nvcsw``): a helper thread that starts torch work next to the
training thread shows up there first (ten times more switches, DESIGN.md). Then
the tiny demo through the CLI: median s/step (target <= 0.01), launch -> first
step with warm caches (target < 5 s) and peak RSS (target < 600 MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

MID = dict(num_attention_heads=4, attention_head_dim=64, ffn_dim=1024, num_layers=3)
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]


@dataclass
class Size:
    name: str
    transformer: dict  # overrides of the tiny transformer's config
    frames: int
    pixels: int  # square clips of this side
    rank: int
    target: float
    flavour: str | None = None  # a Wan flavour other than the default T2V (its tiny model and its inputs)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (16, (self.frames - 1) // 4 + 1, self.pixels // 8, self.pixels // 8)


I2V_FLAVOUR = "i2v-14b-2.1"
SIZES = [
    Size("mid-size Wan-shaped model (3 blocks, dim 256, 1280 tokens, LoRA r16)", MID, 17, 256, 16, 1.02),
    Size(
        "image-to-video (Wan 2.1 I2V shape: 36 input channels + CLIP tokens), same mid-size transformer",
        MID, 17, 256, 16, 1.02, I2V_FLAVOUR,
    ),
    Size("tiny demo model (2 blocks, dim 32, 80 tokens, LoRA r8)", {}, 17, 64, 8, 1.05),
]


def usage() -> tuple[int, float]:
    """(voluntary context switches, CPU seconds) of this process so far, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_nvcsw, r.ru_utime + r.ru_stime


@dataclass
class Loop:
    times: list[float]  # wall seconds per step
    switches: float  # voluntary context switches per step
    cpu: float  # CPU seconds per step (all threads): less disturbed than wall time on a shared machine


def write_model(folder: Path, size: Size) -> Path:
    """The tiny Wan, with the transformer of ``size`` in place of the tiny one."""
    from diffusers import WanTransformer3DModel

    from tuner.demo import prepare_tiny_model
    from tuner.plugins import PluginHost
    from tuner_wan.tiny import TINY_IMAGE_DIM, TINY_TRANSFORMER

    model = folder / "model"
    prepare_tiny_model(PluginHost.build(["wan"]), "wan", model, **({"variant": size.flavour} if size.flavour else {}))
    if size.transformer:
        torch.manual_seed(0)
        shape = {**TINY_TRANSFORMER, **size.transformer}
        if size.flavour:  # noisy latents + frame mask + conditioning latents, and CLIP image tokens
            inner = shape["num_attention_heads"] * shape["attention_head_dim"]
            shape.update(in_channels=36, image_dim=TINY_IMAGE_DIM, added_kv_proj_dim=inner)
        WanTransformer3DModel(**shape).save_pretrained(str(model / "transformer"))
    return model


def write_mid_model(folder: Path) -> Path:
    """The mid-size Wan-shaped model of the first row (other benches measure on it too)."""
    return write_model(folder, SIZES[0])


def timed_run(plugin: str | list[str], raw: dict, steps: int, extra: dict[str, Any] | None = None) -> Loop:
    """Wall time between consecutive steps of a real tuner run of ``raw`` (everything the loop does).

    Runs ``steps + 1`` steps and drops the first (warm-up), so it yields ``steps``
    step times, as many as `timed_loop` does for the bare loop.
    """
    from tuner import hookimpl
    from tuner.config import resolve_config
    from tuner.plugins import PluginHost
    from tuner.train.run import train

    class Clock:
        def __init__(self) -> None:
            self.marks: list[tuple[float, int, float]] = []

        @hookimpl
        def on_run_start(self, run):  # type: ignore[no-untyped-def]
            self.marks.append((time.perf_counter(), *usage()))

        @hookimpl
        def on_step_end(self, run, step, logs):  # type: ignore[no-untyped-def]
            self.marks.append((time.perf_counter(), *usage()))

    clock = Clock()
    names = [plugin] if isinstance(plugin, str) else plugin
    host = PluginHost.build(names, extra={"clock": clock, **(extra or {})})
    raw = {
        **raw,
        "train": {**raw["train"], "max_train_steps": steps + 1},
        "validation": {"validation_prompt": None},
        "console": {"log_format": "quiet"},
    }
    train(resolve_config(raw, host), host)
    marks = clock.marks[1:]  # from the end of the first (warm-up) step
    times = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    return Loop(times, (marks[-1][1] - marks[0][1]) / steps, (marks[-1][2] - marks[0][2]) / steps)


def timed_loop(step: Callable[[], None], steps: int) -> Loop:
    """``steps + 1`` calls of a bare loop's ``step``, the first (warm-up) not counted."""
    times = []
    for i in range(steps + 1):
        if i == 1:
            first = usage()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    last = usage()
    return Loop(times[1:], (last[0] - first[0]) / steps, (last[1] - first[1]) / steps)


def tuner_steps(model: Path, folder: Path, size: Size, steps: int) -> Loop:
    """A real tuner run on ``size``'s clips."""
    return timed_run("wan", tuner_config(model, folder, size), steps)


def tuner_config(model: Path, folder: Path, size: Size) -> dict[str, Any]:
    """The raw config of a tuner run on ``size``'s clips (written next to ``folder`` once, cached there)."""
    from tuner.data.synthetic import write_synthetic_clips

    clips = folder.parent / "clips"
    if not clips.is_dir():
        write_synthetic_clips(clips, count=2, num_frames=size.frames, width=size.pixels, height=size.pixels)
    raw = {
        "train": {"output_dir": str(folder / "out"), "lora_rank": size.rank, "learning_rate": 1e-4},
        "data": {
            "instance_data_dir": str(clips),
            "num_frames": size.frames,
            "resolution": size.pixels,
            "cache_dir": str(folder.parent / "cache"),
        },
        "wan": {
            "pretrained_model_name_or_path": str(model),
            "max_sequence_length": 32,
            **({"model_flavour": size.flavour} if size.flavour else {}),
        },
    }
    return raw


def bare_loop(
    model_class: Any,
    model: Path,
    rank: int,
    targets: list[str],
    latents: torch.Tensor,
    forward: Callable[..., Any],
    steps: int,
    mixed_precision: str = "no",
    dtype: torch.dtype | None = None,
) -> Loop:
    """A training loop with no tuner code: accelerate + diffusers + peft on one cached batch.

    ``forward(transformer, noisy, sigma)`` calls the family's transformer; the
    rest (noise, velocity MSE, backward, clipping, AdamW, reading the loss) is
    what any flow-matching loop does. On a CUDA machine it runs there (bench/gpu.py:
    ``mixed_precision="bf16"`` and a bf16 base, the adapter float32 as tuner keeps it).
    """
    from accelerate import Accelerator
    from peft import LoraConfig

    from tuner.train.timesteps import velocity_errors

    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision)
    loaded = model_class.from_pretrained(str(model), subfolder="transformer", **({"torch_dtype": dtype} if dtype else {}))
    transformer = loaded.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets))
    params = [p for p in transformer.parameters() if p.requires_grad]
    for p in params:  # trainable parameters are float32 (DESIGN.md), whatever the base's dtype
        p.data = p.data.float()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    transformer, optimizer = accelerator.prepare(transformer, optimizer)
    device = accelerator.device
    latents = latents.to(device)
    generator = torch.Generator(device).manual_seed(0)

    def step() -> None:
        sigma = torch.sigmoid(torch.randn(1, generator=generator, device=device))
        noise = torch.randn(latents.shape, generator=generator, device=device)
        noisy = (1 - sigma) * latents + sigma * noise
        loss = velocity_errors(forward(transformer, noisy, sigma), latents, noise).mean()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss.detach())  # a real loop reads its loss

    return timed_loop(step, steps)


def bare_steps(model: Path, size: Size, steps: int) -> Loop:
    """The bare loop on ``size``'s Wan (I2V: with its conditioning)."""
    from diffusers import WanTransformer3DModel

    latents = torch.randn(1, *size.latent_shape)
    text = torch.randn(1, 32, 32)
    extra: dict[str, torch.Tensor] = {}
    if size.flavour:
        condition = torch.cat([torch.zeros(1, 4, *size.latent_shape[1:]), torch.randn(1, *size.latent_shape)], dim=1)
        condition[:, :4, 0] = 1  # the first frame is given
        extra["encoder_hidden_states_image"] = torch.randn(1, 5, 32)

    def forward(transformer: Any, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if size.flavour:
            noisy = torch.cat([noisy, condition], dim=1)
        return transformer(
            hidden_states=noisy, timestep=sigma * 1000, encoder_hidden_states=text, return_dict=False, **extra
        )[0]

    return bare_loop(WanTransformer3DModel, model, size.rank, TARGETS, latents, forward, steps)


def alternate(bare: Callable[[], Loop], tuner: Callable[[int], Loop], rounds: int) -> tuple[list[Loop], list[Loop]]:
    """``rounds`` runs of each loop, interleaved, the order swapping every round: noise (a busy moment, the
    process's cold first run) falls on both alike. Returns (bare runs, tuner runs)."""
    runs: tuple[list[Loop], list[Loop]] = ([], [])
    for r in range(rounds):
        if r % 2:
            runs[1].append(tuner(r))
            runs[0].append(bare())
        else:
            runs[0].append(bare())
            runs[1].append(tuner(r))
    return runs


def report(title: str, bare: list[Loop], tuner: list[Loop], target: float) -> float:
    """Print one row (median wall step, CPU per step, switches, the ratios); return the wall ratio."""
    print(f"\n{title}")
    wall, cpu = {}, {}
    for name, loops in (("bare loop", bare), ("tuner", tuner)):
        times = [t for loop in loops for t in loop.times]
        wall[name] = statistics.median(times)
        cpu[name] = statistics.median(loop.cpu for loop in loops)
        switches = statistics.mean(loop.switches for loop in loops)
        print(
            f"  {name:10s}  median step {wall[name] * 1000:7.2f} ms  CPU {cpu[name] * 1000:7.2f} ms/step"
            f"  {switches:5.1f} voluntary context switches/step  ({len(times)} steps)"
        )
    t, b = wall["tuner"], wall["bare loop"]
    ratio_cpu = cpu["tuner"] / cpu["bare loop"]
    print(f"  ratio tuner / bare      {t / b:.3f} wall, {ratio_cpu:.3f} CPU   (target <= {target}; busy machine: read CPU)")
    walls, cpus = round_ratios(bare, tuner)
    print(f"  per-round ratios        wall {spread(walls)}")
    print(f"                          CPU  {spread(cpus)}")
    print(f"  outside fwd/bwd/opt     {(t - b) * 1000:.2f} ms per step")
    return t / b


def round_ratios(bare: list[Loop], tuner: list[Loop]) -> tuple[list[float], list[float]]:
    """tuner / bare of each round (its two loops ran back to back): (median wall step ratios, CPU ratios)."""
    walls = [statistics.median(t.times) / statistics.median(b.times) for b, t in zip(bare, tuner, strict=True)]
    cpus = [t.cpu / b.cpu for b, t in zip(bare, tuner, strict=True)]
    return walls, cpus


def spread(ratios: list[float]) -> str:
    """The rounds' ratios with their min-max range (and interquartile range from four rounds on).

    One run then shows whether a ratio is noise: a median above the target while
    the rounds range from below to above it says "measure again on an idle machine".
    """
    text = " ".join(f"{r:.3f}" for r in ratios) + f"  (range {min(ratios):.3f}-{max(ratios):.3f}"
    if len(ratios) >= 4:
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        text += f", IQR {q1:.3f}-{q3:.3f}"
    return text + ")"


def compare(folder: Path, size: Size, steps: int, rounds: int) -> None:
    model = write_model(folder, size)
    bare, tuner = alternate(
        lambda: bare_steps(model, size, steps), lambda r: tuner_steps(model, folder / f"run{r}", size, steps), rounds
    )
    report(size.name, bare, tuner, size.target)


def tiny_demo_figures(folder: Path, steps: int) -> dict[str, float]:
    """Median s/step, launch -> first step (warm caches) and peak RSS of `tuner train` on the demo."""
    demo = folder / "demo"
    subprocess.run(["tuner", "demo", "--plugin", "wan", "--dir", str(demo), "--steps", str(steps)], check=True, capture_output=True)
    config = demo / "config.toml"
    log = demo / "output" / "train_log.jsonl"
    log.unlink()
    import psutil

    launched = time.time()
    proc = subprocess.Popen(
        ["tuner", "train", "--config", str(config), "--set", "validation.validation_prompt=''", "--set", "train.checkpoint_step_interval=0", "--set", "train.overwrite_output_dir=true"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    watched, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:  # sample the training process's own resident memory
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    if proc.returncode:
        raise SystemExit(f"tuner train failed with exit code {proc.returncode}")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    steps_ = [r for r in records if r["event"] == "step"]
    return {
        "median_s_per_step": statistics.median(r["step_time"] for r in steps_[1:]),
        "launch_to_first_step_s": steps_[0]["time"] - launched,
        "peak_rss_mib": peak / 2**20,
    }


FLUX_MID = dict(num_layers=2, num_single_layers=2, num_attention_heads=4, attention_head_dim=64, axes_dims_rope=(16, 24, 24))


def flux_overhead(folder: Path, steps: int, rounds: int) -> float:
    """tuner against a bare accelerate + diffusers + peft loop on a mid-size Flux-shaped model; the wall ratio.

    The tiny Flux with a 4-block, dim-256 transformer; 256x256 stills -> 256
    packed image tokens, 32 T5 tokens. Both loops: the same transformer with
    the guidance embedding (given 1.0), LoRA r16 on the plugin's targets,
    AdamW, gradient clipping, the loss read every step, float32.
    """
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from tuner.data.synthetic import write_synthetic_image
    from tuner.demo import prepare_tiny_model
    from tuner.plugins import PluginHost
    from tuner_flux.plugin import LORA_TARGETS
    from tuner_flux.tiny import TINY_TRANSFORMER

    model = folder / "flux-model"
    prepare_tiny_model(PluginHost.build(["flux"]), "flux", model)
    torch.manual_seed(0)
    FluxTransformer2DModel(**{**TINY_TRANSFORMER, **FLUX_MID, "guidance_embeds": True}).save_pretrained(
        str(model / "transformer")
    )
    stills = folder / "flux-stills"
    for i in range(2):
        write_synthetic_image(stills / f"still_{i}.png", 256, 256, index=i)

    def tuner_loop(run: Path) -> Loop:
        raw = {
            "train": {"output_dir": str(run / "out"), "lora_rank": 16, "learning_rate": 1e-4},
            "data": {"instance_data_dir": str(stills), "num_frames": 1, "resolution": 256, "cache_dir": str(folder / "flux-cache")},
            "flux": {"flux_pretrained_model_name_or_path": str(model), "flux_t5_max_length": 32, "flux_guidance_value": 1.0},
        }
        return timed_run("flux", raw, steps)

    extra = {
        "encoder_hidden_states": torch.randn(1, 32, 32),
        "pooled_projections": torch.randn(1, 32),
        "img_ids": FluxPipeline._prepare_latent_image_ids(1, 16, 16, "cpu", torch.float32),
        "txt_ids": torch.zeros(32, 3),
        "guidance": torch.ones(1),
    }

    def forward(transformer: Any, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return transformer(hidden_states=noisy, timestep=sigma, **extra, return_dict=False)[0]

    def bare_run() -> Loop:
        return bare_loop(FluxTransformer2DModel, model, 16, LORA_TARGETS, torch.randn(1, 256, 16), forward, steps)

    bare, tuner = alternate(bare_run, lambda r: tuner_loop(folder / f"flux-run{r}"), rounds)
    title = "mid-size Flux-shaped model (2 double + 2 single blocks, dim 256, 256 image tokens, LoRA r16)"
    return report(title, bare, tuner, 1.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    parser.add_argument("--flux", action="store_true", help="also measure the Flux row")
    parser.add_argument("--only-flux", action="store_true", help="measure the Flux row alone")
    parser.add_argument("--rounds", type=int, help="rounds per row (default 3, --quick 2); 4 or more print an IQR")
    parser.add_argument("--row", choices=["mid", "i2v", "tiny"], action="append", help="only these Wan rows (repeatable)")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 3)
    load = os.getloadavg()[0]
    print(f"threads: {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    print(f"load average (1 min): {load:.2f} on {os.cpu_count()} CPUs" + ("  -- busy machine: figures are indicative" if load > 0.5 else ""))
    flux_steps = 8 if args.quick else 16  # ~0.1 s each: enough steps that the median is not one noisy step
    if args.only_flux:
        with tempfile.TemporaryDirectory() as tmp:
            flux_overhead(Path(tmp), flux_steps, rounds)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.flux:
            flux_overhead(folder, flux_steps, rounds)
        for key, size, steps in zip(("mid", "i2v", "tiny"), SIZES, (4, 4, 30) if args.quick else (8, 8, 60)):
            if not args.row or key in args.row:
                compare(folder / size.name.split()[0], size, steps, rounds)
        if args.row:
            return
        figures = tiny_demo_figures(folder, 40)
        print("\ntiny demo through the CLI")
        print(f"  median s/step           {figures['median_s_per_step']:.4f}   (target <= 0.01)")
        print(f"  launch -> first step    {figures['launch_to_first_step_s']:.2f} s (target < 5, warm caches)")
        print(f"  peak RSS                {figures['peak_rss_mib']:.0f} MiB (target < 600)")


if __name__ == "__main__":
    sys.exit(main())

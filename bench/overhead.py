"""Framework overhead: tuner's training step against a bare accelerate + diffusers + peft loop.

    python bench/overhead.py            # mid-size ratio + tiny demo figures
    python bench/overhead.py --quick    # fewer steps
    python bench/overhead.py --flux     # plus the Flux row (`flux_overhead`)

Both loops train the same mid-size Wan-shaped transformer (random init, LoRA
rank 16 on the same modules, AdamW, same cached batch shape), alternating in
rounds so machine noise hits both alike. Printed: median step times, their
ratio (target <= 1.02), and the time per step tuner spends outside
forward/backward/optimizer; the same for image-to-video (the Wan 2.1 I2V shape,
conditioning included) against a bare I2V loop. Then the tiny demo model: median s/step (target
<= 0.01), launch -> first step with warm caches (target < 5 s) and peak RSS
(target < 600 MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MID = dict(num_attention_heads=4, attention_head_dim=64, ffn_dim=1024, num_layers=3)
LATENT_SHAPE = (16, 5, 32, 32)  # 17 frames of 256x256 pixels -> 1280 tokens


def write_mid_model(folder: Path) -> Path:
    """The tiny Wan with a mid-size transformer in place of the tiny one."""
    from diffusers import WanTransformer3DModel

    from tuner.demo import prepare_tiny_model
    from tuner.plugins import PluginHost
    from tuner_wan.tiny import TINY_TRANSFORMER

    model = folder / "model"
    prepare_tiny_model(PluginHost.build(["wan"]), "wan", model)
    torch.manual_seed(0)
    WanTransformer3DModel(**{**TINY_TRANSFORMER, **MID}).save_pretrained(str(model / "transformer"))
    return model


def tuner_step_times(model: Path, folder: Path, steps: int, wan: dict | None = None) -> list[float]:
    """Wall time between consecutive steps of a real tuner run (everything the loop does)."""
    from tuner.config import resolve_config
    from tuner.data.synthetic import write_synthetic_clips
    from tuner.hookspecs import hookimpl
    from tuner.plugins import PluginHost
    from tuner.train.run import train

    clips = folder / "clips"
    if not clips.is_dir():
        write_synthetic_clips(clips, count=2, num_frames=17, width=256, height=256)

    class Clock:
        def __init__(self) -> None:
            self.marks: list[float] = []

        @hookimpl
        def on_run_start(self, run):  # type: ignore[no-untyped-def]
            self.marks.append(time.perf_counter())

        @hookimpl
        def on_step_end(self, run, step, logs):  # type: ignore[no-untyped-def]
            self.marks.append(time.perf_counter())

    clock = Clock()
    host = PluginHost.build(["wan"], extra={"clock": clock})
    config = resolve_config(
        {
            "train": {"output_dir": str(folder / "out"), "max_train_steps": steps, "lora_rank": 16, "learning_rate": 1e-4},
            "data": {"instance_data_dir": str(clips), "num_frames": 17, "resolution": 256, "cache_dir": str(folder / "cache")},
            "wan": {"pretrained_model_name_or_path": str(model), "max_sequence_length": 32, **(wan or {})},
        },
        host,
    )
    train(config, host)
    return [b - a for a, b in zip(clock.marks[1:], clock.marks[2:])]  # drop the first (warm-up) step


def bare_step_times(model: Path, steps: int) -> list[float]:
    """The same work with no tuner code: accelerate + diffusers + peft, one cached batch."""
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    transformer = WanTransformer3DModel.from_pretrained(str(model), subfolder="transformer").requires_grad_(False)
    transformer.add_adapter(
        LoraConfig(r=16, lora_alpha=16, target_modules=["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"])
    )
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    transformer, optimizer = accelerator.prepare(transformer, optimizer)
    latents = torch.randn(1, *LATENT_SHAPE)
    text = torch.randn(1, 32, 32)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        sigma = torch.sigmoid(torch.randn(1, generator=generator))
        noise = torch.randn(latents.shape, generator=generator)
        noisy = (1 - sigma) * latents + sigma * noise
        pred = transformer(hidden_states=noisy, timestep=sigma * 1000, encoder_hidden_states=text, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise - latents)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[1:]


I2V_FLAVOUR = "i2v-14b-2.1"


def write_mid_i2v_model(folder: Path) -> Path:
    """The tiny Wan 2.1 I2V (CLIP encoder included) with a mid-size 36-channel transformer."""
    from diffusers import WanTransformer3DModel

    from tuner.demo import prepare_tiny_model
    from tuner.plugins import PluginHost
    from tuner_wan.tiny import TINY_IMAGE_DIM, TINY_TRANSFORMER

    model = folder / "model-i2v"
    prepare_tiny_model(PluginHost.build(["wan"]), "wan", model, variant=I2V_FLAVOUR)
    torch.manual_seed(0)
    inner = MID["num_attention_heads"] * MID["attention_head_dim"]
    shape = {**TINY_TRANSFORMER, **MID, "in_channels": 36, "image_dim": TINY_IMAGE_DIM, "added_kv_proj_dim": inner}
    WanTransformer3DModel(**shape).save_pretrained(str(model / "transformer"))
    return model


def bare_i2v_step_times(model: Path, steps: int) -> list[float]:
    """A bare I2V loop: noisy latents + frame mask + conditioning latents (36 channels) and CLIP tokens, cached."""
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    transformer = WanTransformer3DModel.from_pretrained(str(model), subfolder="transformer").requires_grad_(False)
    transformer.add_adapter(
        LoraConfig(r=16, lora_alpha=16, target_modules=["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"])
    )
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    transformer, optimizer = accelerator.prepare(transformer, optimizer)
    latents = torch.randn(1, *LATENT_SHAPE)
    condition = torch.cat([torch.zeros(1, 4, *LATENT_SHAPE[1:]), torch.randn(1, *LATENT_SHAPE)], dim=1)
    condition[:, :4, 0] = 1  # the first frame is given
    text, image = torch.randn(1, 32, 32), torch.randn(1, 5, 32)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        sigma = torch.sigmoid(torch.randn(1, generator=generator))
        noise = torch.randn(latents.shape, generator=generator)
        noisy = (1 - sigma) * latents + sigma * noise
        pred = transformer(
            hidden_states=torch.cat([noisy, condition], dim=1),
            timestep=sigma * 1000,
            encoder_hidden_states=text,
            encoder_hidden_states_image=image,
            return_dict=False,
        )[0]
        loss = F.mse_loss(pred.float(), noise - latents)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[1:]


def i2v_row(folder: Path, steps: int, rounds: int) -> None:
    """tuner's I2V step (conditioning from the cache, mask built per step) against the bare I2V loop."""
    model = write_mid_i2v_model(folder)
    tuner_times: list[float] = []
    bare_times: list[float] = []
    for r in range(rounds):
        bare_times += bare_i2v_step_times(model, steps)
        tuner_times += tuner_step_times(model, folder / f"i2v-run{r}", steps, wan={"model_flavour": I2V_FLAVOUR})
    t, b = statistics.median(tuner_times), statistics.median(bare_times)
    print("\nimage-to-video (Wan 2.1 I2V shape: 36 input channels + CLIP tokens), same mid-size transformer")
    print(f"  bare I2V loop median step {b:.4f} s  ({len(bare_times)} steps)")
    print(f"  tuner I2V     median step {t:.4f} s  ({len(tuner_times)} steps)")
    print(f"  ratio tuner / bare        {t / b:.3f}   (target <= 1.02)")


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
        ["tuner", "train", "--config", str(config), "--set", "validation.validation_prompt=''", "--set", "train.checkpoint_step_interval=0"],
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


def flux_overhead(folder: Path, steps: int, rounds: int) -> tuple[float, float]:
    """Median step of tuner against a bare accelerate + diffusers + peft loop, on a mid-size Flux-shaped model.

    The tiny Flux with a 4-block, dim-256 transformer; 256x256 stills -> 256 packed image tokens, 32 T5 tokens.
    Returns (tuner, bare) median seconds per step.
    """
    from accelerate import Accelerator
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig

    from tuner.config import resolve_config
    from tuner.data.synthetic import write_synthetic_image
    from tuner.demo import prepare_tiny_model
    from tuner.hookspecs import hookimpl
    from tuner.plugins import PluginHost
    from tuner.train.run import train
    from tuner.train.timesteps import velocity_errors
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

    def tuner_times(run: Path) -> list[float]:
        class Clock:
            marks: list[float] = []

            @hookimpl
            def on_run_start(self, run):  # type: ignore[no-untyped-def]
                self.marks.append(time.perf_counter())

            @hookimpl
            def on_step_end(self, run, step, logs):  # type: ignore[no-untyped-def]
                self.marks.append(time.perf_counter())

        clock = Clock()
        clock.marks = []
        host = PluginHost.build(["flux"], extra={"clock": clock})
        config = resolve_config(
            {
                "train": {"output_dir": str(run / "out"), "max_train_steps": steps, "lora_rank": 16, "learning_rate": 1e-4},
                "data": {"instance_data_dir": str(stills), "num_frames": 1, "resolution": 256, "cache_dir": str(run / "cache")},
                "flux": {"flux_pretrained_model_name_or_path": str(model), "flux_t5_max_length": 32},
            },
            host,
        )
        train(config, host)
        return [b - a for a, b in zip(clock.marks[1:], clock.marks[2:])]

    def bare_times() -> list[float]:
        accelerator = Accelerator(cpu=not torch.cuda.is_available())
        transformer = FluxTransformer2DModel.from_pretrained(str(model), subfolder="transformer").requires_grad_(False)
        transformer.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=LORA_TARGETS))
        params = [p for p in transformer.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        transformer, optimizer = accelerator.prepare(transformer, optimizer)
        latents = torch.randn(1, 256, 16)
        extra = {
            "encoder_hidden_states": torch.randn(1, 32, 32),
            "pooled_projections": torch.randn(1, 32),
            "img_ids": FluxPipeline._prepare_latent_image_ids(1, 16, 16, "cpu", torch.float32),
            "txt_ids": torch.zeros(32, 3),
            "guidance": torch.ones(1),
        }
        generator = torch.Generator().manual_seed(0)
        times = []
        for _ in range(steps + 1):
            start = time.perf_counter()
            sigma = torch.sigmoid(torch.randn(1, generator=generator))
            noise = torch.randn(latents.shape, generator=generator)
            noisy = (1 - sigma) * latents + sigma * noise
            pred = transformer(hidden_states=noisy, timestep=sigma, **extra, return_dict=False)[0]
            accelerator.backward(velocity_errors(pred, latents, noise).mean())
            accelerator.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        return times[1:]

    tuner: list[float] = []
    bare: list[float] = []
    for r in range(rounds):  # alternate so noise falls on both
        bare += bare_times()
        tuner += tuner_times(folder / f"flux-run{r}")
    t, b = statistics.median(tuner), statistics.median(bare)
    print("\nmid-size Flux-shaped model (2 double + 2 single blocks, dim 256, 256 image tokens, LoRA r16)")
    print(f"  bare loop   median step {b:.4f} s  ({len(bare)} steps)")
    print(f"  tuner       median step {t:.4f} s  ({len(tuner)} steps)")
    print(f"  ratio tuner / bare      {t / b:.3f}   (target <= 1.02)")
    return t, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    parser.add_argument("--flux", action="store_true", help="also measure the Flux row")
    parser.add_argument("--only-flux", action="store_true", help="measure the Flux row alone")
    args = parser.parse_args()
    steps, rounds = (4, 2) if args.quick else (8, 3)
    print(f"threads: {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    if args.only_flux:
        with tempfile.TemporaryDirectory() as tmp:
            flux_overhead(Path(tmp), steps, rounds)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.flux:
            flux_overhead(folder, steps, rounds)
        model = write_mid_model(folder)
        tuner_times: list[float] = []
        bare_times: list[float] = []
        for r in range(rounds):  # alternate so noise falls on both
            bare_times += bare_step_times(model, steps)
            tuner_times += tuner_step_times(model, folder / f"run{r}", steps)
        t, b = statistics.median(tuner_times), statistics.median(bare_times)
        print("\nmid-size Wan-shaped model (3 blocks, dim 256, 1280 tokens, LoRA r16)")
        print(f"  bare loop   median step {b:.4f} s  ({len(bare_times)} steps)")
        print(f"  tuner       median step {t:.4f} s  ({len(tuner_times)} steps)")
        print(f"  ratio tuner / bare      {t / b:.3f}   (target <= 1.02)")
        print(f"  outside fwd/bwd/opt     {max(0.0, t - b) * 1000:.1f} ms per step")
        i2v_row(folder, steps, rounds)
        figures = tiny_demo_figures(folder, 40)
        print("\ntiny demo model")
        print(f"  median s/step           {figures['median_s_per_step']:.4f}   (target <= 0.01)")
        print(f"  launch -> first step    {figures['launch_to_first_step_s']:.2f} s (target < 5, warm caches)")
        print(f"  peak RSS                {figures['peak_rss_mib']:.0f} MiB (target < 600)")


if __name__ == "__main__":
    sys.exit(main())

"""Latent cache build throughput: tuner against a bare decode + VAE-encode loop, side by side.

    python bench/data_cache.py                  # 16 clips of 17 frames, 640x352 -> trained at 176x96
    python bench/data_cache.py --clips 64 --rounds 5
    python bench/data_cache.py --workers 1      # tuner with a single decoder thread
    python bench/data_cache.py --long-windows 16  # the long-clip row with 16 windows

Both sides turn the same clips into the same latents with the tiny Wan VAE
(diffusers' AutoencoderKLWan in the real layout, small widths):

* bare: for each clip, PyAV decodes the first frames resized by libswscale (as
  tuner does), the pixels go to [-1, 1], the VAE encodes, the latents are
  normalised. One clip after another, nothing written, no framework.
* tuner: ``scan_samples`` + ``prepare_samples`` on an empty cache folder, i.e.
  everything a user waits for on a first start: listing, captions, probing and
  hashing every file, sizing and bucketing, decoding in worker threads while
  the VAE encodes, writing every entry atomically, encoding the captions.

A last row decodes ``--long-windows`` windows of 17 frames (at Wan's 16 fps)
from a 2-minute 60 fps clip with ``frame_extraction = "uniform"``, in ms per
window, beside a decode of the whole clip: seeking makes the cost follow the
windows taken, not the clip's length (target: a window well under 1/8 of the
whole clip).

Rounds alternate (bare, tuner, bare, tuner, ...) so drift in the machine's speed
hits both; the table shows each side's median clips/s and their ratio (target
>= 0.9). The latent phase alone is reported too. Threads follow
OMP_NUM_THREADS (torch's default when unset).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch


def setup(folder: Path, clips: int, frames: int, width: int, height: int) -> tuple[Path, Path]:
    from tuner.data.synthetic import write_synthetic_clips
    from tuner.demo import prepare_tiny_model
    from tuner.plugins import PluginHost

    model = folder / "model"
    prepare_tiny_model(PluginHost.build(["wan"]), "wan", model)
    write_synthetic_clips(folder / "clips", count=clips, num_frames=frames, width=width, height=height)
    return model, folder / "clips"


def load(model: Path, clips: Path, cache: Path, frames: int, resolution: int, workers: int):
    from tuner.config import resolve_config
    from tuner.demo import prepare_tiny_model
    from tuner.plugins import PluginHost

    host = PluginHost.build(["wan"])
    overrides = prepare_tiny_model(host, "wan", model)
    raw = {
        "plugins": ["wan"],
        "data": {
            "instance_data_dir": str(clips),
            "num_frames": frames,
            "resolution": resolution,
            "resolution_type": "pixel",
            "cache_dir": str(cache),
            "decode_workers": workers,
        },
        "train": {"output_dir": str(cache.parent / "out")},
    }
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        raw.setdefault(section, {})[name] = value
    config = resolve_config(raw, host, clips.parent)
    bundle = host.load_model(config, torch.device("cpu"))
    return host, config, bundle


def bare_loop(bundle, paths: list[Path], frames: int, size: tuple[int, int], resize: tuple[int, int]) -> float:
    """Seconds to decode and encode every clip, one after another."""
    import av
    import numpy as np
    from tuner_wan.encode import latent_stats

    vae = bundle.components["vae"]
    width, height = size
    rw, rh = resize
    left, top = (rw - width) // 2, (rh - height) // 2
    start = time.perf_counter()
    for path in paths:
        decoded = []
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(width=rw, height=rh, format="rgb24", interpolation="BICUBIC")
                decoded.append(rgb[top : top + height, left : left + width])
                if len(decoded) == frames:
                    break
        video = torch.from_numpy(np.stack(decoded)).permute(3, 0, 1, 2)[None].contiguous().float() / 127.5 - 1
        with torch.no_grad():
            latents = vae.encode(video).latent_dist.mode()
            mean, std = latent_stats(vae, latents)
            ((latents - mean) / std).cpu()
    return time.perf_counter() - start


def tuner_build(host, config, bundle) -> tuple[float, float]:
    """Seconds for a cold scan + prepare, and for its latent phase alone."""
    import tuner.data.prepare as prepare

    phase = {}
    real = prepare._encode_missing_latents

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            phase["latents"] = time.perf_counter() - t0

    prepare._encode_missing_latents = timed
    try:
        start = time.perf_counter()
        scan = prepare.scan_samples(config)
        data = prepare.prepare_samples(host, bundle, config, scan, torch.device("cpu"))
        total = time.perf_counter() - start
        data.close()
    finally:
        prepare._encode_missing_latents = real
    return total, phase["latents"]


def long_clip_row(folder: Path, bundle, windows: int, rounds: int) -> tuple[float, float, int]:
    """(ms per window with seeking, ms to decode the whole clip once, windows) for a 2-minute 60 fps clip."""
    import json

    import av
    import numpy as np

    from tuner.config import resolve_config
    from tuner.data.buckets import plan_samples
    from tuner.data.frames import decode_sample
    from tuner.data.prepare import scan_samples
    from tuner.data.synthetic import write_timed_clip
    from tuner.plugins import PluginHost

    clip = write_timed_clip(folder / "long" / "take.mp4", np.arange(120 * 60) / 60, width=160, height=32, fps=60)
    clip.with_suffix(".txt").write_text("a long take")
    backend = [{
        "id": "long", "dataset_type": "video", "instance_data_dir": "long", "resolution": 32,
        "resolution_type": "pixel", "video": {"num_frames": 17, "frame_extraction": "uniform", "frame_sample": windows},
    }]
    (folder / "long.json").write_text(json.dumps(backend))
    raw = {"plugins": ["wan"], "data": {"data_backend_config": "long.json", "cache_dir": str(folder / "long-cache")},
           "train": {"output_dir": str(folder / "out")}}
    config = resolve_config(raw, PluginHost.build(["wan"]), folder)
    samples = plan_samples(scan_samples(config), bundle, config)
    per_window, whole = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for s in samples:
            decode_sample(s.source, s.geometry)
        per_window.append((time.perf_counter() - start) / len(samples) * 1000)
        start = time.perf_counter()
        with av.open(str(clip)) as container:
            for _frame in container.decode(video=0):
                pass
        whole.append((time.perf_counter() - start) * 1000)
    return statistics.median(per_window), statistics.median(whole), len(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=352)
    parser.add_argument("--resolution", type=int, default=96, help="short side trained (resolution_type pixel)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="tuner's decode_workers (0: automatic)")
    parser.add_argument("--long-windows", type=int, default=8, help="uniform windows taken from the 2-minute clip")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tuner-bench-data-") as tmp:
        folder = Path(tmp)
        model, clips = setup(folder, args.clips, args.frames, args.width, args.height)
        cache = folder / "cache"
        host, config, bundle = load(model, clips, cache, args.frames, args.resolution, args.workers)
        # The geometry tuner picks, so the bare loop does exactly the same work.
        from tuner.data.buckets import plan_samples
        from tuner.data.prepare import scan_samples

        sample = plan_samples(scan_samples(config), bundle, config)[0].geometry
        paths = sorted(clips.glob("*.mp4"))
        size, resize = (sample.width, sample.height), sample.resize
        bare_loop(bundle, paths[:2], args.frames, size, resize)  # warm-up: allocator, codec tables
        bare, ours, latent = [], [], []
        for _ in range(args.rounds):
            bare.append(bare_loop(bundle, paths, args.frames, size, resize))
            shutil.rmtree(cache, ignore_errors=True)
            total, phase = tuner_build(host, config, bundle)
            ours.append(total)
            latent.append(phase)
        window_ms, whole_ms, windows = long_clip_row(folder, bundle, args.long_windows, args.rounds)

    n = args.clips
    bare_rate, our_rate = n / statistics.median(bare), n / statistics.median(ours)
    latent_rate = n / statistics.median(latent)
    print(
        f"{n} clips, {args.frames} frames, {args.width}x{args.height} -> {size[0]}x{size[1]}, tiny Wan VAE,"
        f" torch threads {torch.get_num_threads()}, median of {args.rounds} rounds"
    )
    print(f"{'':34} {'clips/s':>8} {'vs bare':>8}")
    print(f"{'bare decode + encode loop':34} {bare_rate:8.2f} {1.0:8.2f}")
    print(f"{'tuner: cold scan + cache build':34} {our_rate:8.2f} {our_rate / bare_rate:8.2f}")
    print(f"{'tuner: latent phase alone':34} {latent_rate:8.2f} {latent_rate / bare_rate:8.2f}")
    print(
        f"2-minute 60 fps clip (160x32), uniform, {windows} windows of 17 frames at 16 fps:"
        f" {window_ms:.1f} ms per window (seeking) vs {whole_ms:.0f} ms to decode the whole clip"
        f" ({window_ms / whole_ms:.3f} of it per window; target < {1 / 8:.3f})"
    )


if __name__ == "__main__":
    main()

"""Filling the caches: decode and encode whatever is not cached yet.

Decoding runs in a thread pool ahead of the encoder (PyAV releases the GIL), so
the encoder does not wait on the decoder.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.cache.store import entry_key, entry_path, file_digest, write_entry
from tuner.data.frames import load_sample_pixels
from tuner.report.progress import task_progress

if TYPE_CHECKING:
    import torch

    from tuner.data.local import Sample
    from tuner.plugins import PluginHost
    from tuner.types import ModelBundle

__all__ = ["CachedSample", "EMPTY_PROMPT", "build_caches"]

EMPTY_PROMPT = ""


@dataclass(frozen=True)
class CachedSample:
    """Where one training sample's latents and caption embedding are kept."""

    source: Path
    latents: Path
    text: Path


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _text_path(folder: Path, bundle: ModelBundle, caption: str) -> Path:
    return entry_path(folder, entry_key(kind="text", caption=caption, encoder=bundle.cache_id))


def build_caches(
    host: PluginHost,
    bundle: ModelBundle,
    samples: Sequence[Sample],
    *,
    cache_dir: Path,
    num_frames: int,
    resolution: int,
    vae_batch_size: int,
    text_batch_size: int,
    device: torch.device,
) -> list[CachedSample]:
    """Make sure every sample (and the empty prompt) is cached; return where."""
    import torch

    latent_dir, text_dir = cache_dir / "vae", cache_dir / "text"
    settings = {"num_frames": num_frames, "resolution": resolution, "encoder": bundle.cache_id}
    latent_paths = [
        entry_path(latent_dir, entry_key(kind="latents", file=file_digest(s.path), **settings)) for s in samples
    ]
    todo = [(s, p) for s, p in zip(samples, latent_paths) if not p.is_file()]
    if todo:
        with task_progress("encoding clips", len(todo), unit="clips") as advance, ThreadPoolExecutor(2) as pool:
            decoded = pool.map(lambda item: load_sample_pixels(item[0].path, num_frames, resolution), todo)
            for batch in _chunks(todo, vae_batch_size):
                pixels = torch.stack([next(decoded) for _ in batch]).to(device)
                with torch.no_grad():
                    encoded = host.encode_batch(bundle, pixels)
                for (sample, path), tensors in zip(batch, encoded):
                    write_entry(path, tensors, {"source": str(sample.path)})
                advance(len(batch))

    captions = list(dict.fromkeys([EMPTY_PROMPT, *(s.caption for s in samples)]))
    missing = [c for c in captions if not _text_path(text_dir, bundle, c).is_file()]
    if missing:
        with task_progress("encoding captions", len(missing), unit="captions") as advance:
            for batch in _chunks(missing, text_batch_size):
                with torch.no_grad():
                    encoded = host.encode_prompts(bundle, list(batch))
                for caption, tensors in zip(batch, encoded):
                    write_entry(_text_path(text_dir, bundle, caption), tensors)
                advance(len(batch))

    return [
        CachedSample(source=s.path, latents=p, text=_text_path(text_dir, bundle, s.caption))
        for s, p in zip(samples, latent_paths)
    ]

"""The latent and text caches: incremental, batched, atomic, resumable, overlapped with decoding."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

from tuner import hookimpl
from tuner.cache.store import entry_is_sound, read_entry, write_entry
from tuner.config import resolve_config
from tuner.data.encode import EntryWriter
from tuner.data.prepare import prepare_samples, scan_samples
from tuner.data.synthetic import write_synthetic_clips
from tuner.plugins import PluginHost
from tuner.testing.toy import ToyFamily, toy_config


class Counting(ToyFamily):
    """The toy family, recording every batch it encodes; optionally slow, or interrupted at one call."""

    def __init__(self, interrupt_at: int | None = None, delay: float = 0.0) -> None:
        super().__init__()
        self.batches: list[tuple[int, ...]] = []
        self.prompts: list[str] = []
        self.interrupt_at, self.delay = interrupt_at, delay
        self.busy: list[tuple[float, float]] = []

    @hookimpl
    def encode_batch(self, bundle, pixels):  # type: ignore[override]
        if self.interrupt_at is not None and len(self.batches) == self.interrupt_at:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the build
        start = time.perf_counter()
        time.sleep(self.delay)
        self.batches.append(tuple(pixels.shape))
        out = ToyFamily.encode_batch(self, bundle, pixels)
        self.busy.append((start, time.perf_counter()))
        return out

    @hookimpl
    def encode_prompts(self, bundle, prompts):  # type: ignore[override]
        self.prompts.extend(prompts)
        return ToyFamily.encode_prompts(self, bundle, prompts)

    @property
    def clips(self) -> int:
        return sum(shape[0] for shape in self.batches)


def build(folder: Path, family: Counting | None = None, **data):
    family = family or Counting()
    host = PluginHost.build([], extra={"toy": family})
    raw = toy_config(folder)
    raw["data"].update({"num_frames": 5, **data})
    config = resolve_config(raw, host, folder)
    scan = scan_samples(config)
    bundle = host.load_model(config, torch.device("cpu"))
    return prepare_samples(host, bundle, config, scan, torch.device("cpu")), family


@pytest.fixture
def folder(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=3, num_frames=5, width=16, height=16)
    return tmp_path


def test_a_second_start_encodes_nothing(folder):
    _, first = build(folder)
    assert first.clips == 3 and len(first.prompts) == 4  # 3 captions and the empty prompt
    _, second = build(folder)
    assert second.clips == 0 and second.prompts == []


def test_adding_editing_deleting_one_clip_re_encodes_that_clip_only(folder):
    clips = folder / "clips"
    build(folder)
    write_synthetic_clips(clips, count=1, num_frames=5, width=16, height=16, start=3)
    assert build(folder)[1].clips == 1, "added"
    replacement = write_synthetic_clips(folder / "new", count=1, num_frames=5, width=16, height=16, start=5)[0]
    os.replace(replacement, clips / "clip_000.mp4")
    data, family = build(folder)
    assert family.clips == 1 and family.prompts == [], "edited: the clip again, its caption is cached"
    (clips / "clip_001.mp4").unlink()
    data, family = build(folder)
    assert family.clips == 0 and len(data.samples) == 3, "deleted"
    (clips / "clip_002.txt").write_text("a new caption")
    assert build(folder)[1].prompts == ["a new caption"], "a caption edit re-encodes the caption alone"
    assert build(folder)[1].clips == 0


def test_a_setting_that_changes_the_pixels_re_encodes_every_clip(folder):
    build(folder, resolution=16)
    assert build(folder, resolution=12)[1].clips == 3
    assert build(folder, resolution=16)[1].clips == 0, "the earlier entries are still there"


def test_batches_hold_vae_batch_size_same_shape_clips(folder):
    write_synthetic_clips(folder / "clips", count=1, num_frames=5, width=16, height=32, start=3, prefix="tall")
    _, family = build(folder, vae_batch_size=2, disable_bucket_pruning=True)
    assert sorted(family.batches) == sorted([(2, 5, 3, 16, 16), (1, 5, 3, 16, 16), (1, 5, 3, 23, 11)])


def test_an_interrupted_build_resumes_without_redoing_finished_entries(folder):
    stale = folder / "cache" / "vae" / "ab" / ".abc.safetensors.999999999.partial"  # a writer that died
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    with pytest.raises(KeyboardInterrupt):
        build(folder, Counting(interrupt_at=1))
    entries = list((folder / "cache" / "vae").rglob("*.safetensors"))
    assert len(entries) == 1 and all(entry_is_sound(e) for e in entries), "the finished entry is kept, whole"
    assert not list((folder / "cache").rglob("*.partial")), "no partial files: stale ones cleaned, none left"
    _, family = build(folder)
    assert family.clips == 2


def test_a_damaged_entry_is_encoded_again(folder):
    data, _ = build(folder)
    damaged = data.samples[0].latents
    damaged.write_bytes(damaged.read_bytes()[:40])
    assert build(folder)[1].clips == 1


def test_compress_disk_cache_writes_gzip_entries_read_like_plain_ones(folder):
    plain, _ = build(folder)
    plain_latents = read_entry(plain.samples[0].latents)
    packed, family = build(
        folder / "other",
        compress_disk_cache=True,
        instance_data_dir=str(folder / "clips"),
        cache_dir=str(folder / "packed"),
    )
    assert family.clips == 3
    stored = list((folder / "packed").rglob("*.safetensors.gz"))
    assert len(stored) == 3 + 4 and not list((folder / "packed").rglob("*.safetensors"))
    assert torch.equal(read_entry(packed.samples[0].latents)["latents"], plain_latents["latents"])
    assert build(folder, compress_disk_cache=True)[1].clips == 0, "switching the option re-encodes nothing"


def test_one_text_cache_shared_by_datasets(folder):
    import json

    (folder / "backend.json").write_text(
        json.dumps(
            [
                {"id": "a", "dataset_type": "video", "instance_data_dir": "clips"},
                {"id": "b", "dataset_type": "video", "instance_data_dir": "clips", "resolution": 12},
                {"id": "text", "dataset_type": "text_embeds", "default": True, "cache_dir": "text"},
            ]
        )
    )
    data, family = build(folder, data_backend_config="backend.json", instance_data_dir=None, resolution=16)
    assert family.clips == 6 and len(family.prompts) == 4, "each caption once, for both datasets"
    assert len(list((folder / "text").rglob("*.safetensors"))) == 4


def test_decoding_runs_while_the_encoder_works(folder, monkeypatch):
    import tuner.data.encode as build_module

    write_synthetic_clips(folder / "clips", count=3, num_frames=5, width=16, height=16, start=3)
    decoding: list[tuple[float, float]] = []
    real = build_module.decode_sample

    def timed(path, geometry, **kwargs):
        start = time.perf_counter()
        out = real(path, geometry, **kwargs)
        decoding.append((start, time.perf_counter()))
        return out

    monkeypatch.setattr(build_module, "decode_sample", timed)
    _, family = build(folder, Counting(delay=0.05), decode_workers=2)
    assert family.clips == 6
    overlapping = [d for d in decoding if any(b0 < d[0] < b1 for b0, b1 in family.busy)]
    assert overlapping, "the next clips decode while the encoder is busy"


def test_write_batch_size_bounds_what_waits_in_memory(tmp_path, monkeypatch):
    import tuner.data.encode as build_module

    gate = threading.Event()
    real = build_module.write_entry

    def slow(*args, **kwargs):
        gate.wait(5)
        return real(*args, **kwargs)

    monkeypatch.setattr(build_module, "write_entry", slow)
    writer = EntryWriter(depth=2, compress=False)
    tensors = {"x": torch.zeros(2)}
    for i in range(3):  # one being written, two waiting
        writer.put(tmp_path / f"{i}.safetensors", tensors)
    assert writer.queue.full()
    gate.set()
    writer.close()
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["0.safetensors", "1.safetensors", "2.safetensors"]


def test_entries_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "e.safetensors"
    write_entry(path, {"x": torch.ones(3)})
    assert entry_is_sound(path)

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_entry(path, {"x": torch.zeros(3)})
    assert torch.equal(read_entry(path)["x"], torch.ones(3)), "the old entry is intact"

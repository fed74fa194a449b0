"""The batch loader's threads: the prefetch thread reads files and runs no torch op (DESIGN.md)."""

from __future__ import annotations

import pytest
import torch
from data_setup import configure, prepared, video
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from tuner.data.synthetic import write_synthetic_clips


@pytest.fixture
def clips(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=3, num_frames=5, width=24, height=16)
    return tmp_path


class _TorchCalls(TorchFunctionMode):
    """Records every torch function called while active (on the thread that entered it)."""

    def __init__(self, seen: list[str]) -> None:
        super().__init__()
        self.seen = seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(getattr(func, "__name__", repr(func)))
        return func(*args, **(kwargs or {}))


class _AtenCalls(TorchDispatchMode):
    """Records every ATen op run while active, including those called from C (safetensors)."""

    def __init__(self, seen: list[str]) -> None:
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def _spying(seen: list[str]):
    import contextlib

    stack = contextlib.ExitStack()
    stack.enter_context(_TorchCalls(seen))
    stack.enter_context(_AtenCalls(seen))
    return stack


def test_the_spies_see_a_torch_op_on_a_helper_thread():
    from concurrent.futures import ThreadPoolExecutor

    seen: list[str] = []

    def work():
        with _spying(seen):
            torch.stack([torch.ones(2), torch.zeros(2)])

    with ThreadPoolExecutor(1) as pool:
        pool.submit(work).result()
    assert "stack" in seen and any("aten.stack" in s or "aten.cat" in s for s in seen)


def test_the_prefetch_thread_calls_no_torch_op(clips, monkeypatch):
    # A torch op on the prefetch thread starts a second OpenMP team that slows every op of the
    # training thread (DESIGN.md, "Rules learned from measurement"): that thread only reads files.
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import tuner.data.batches as batches
    from tuner.cache.store import read_entry

    seen: list[str] = []
    helpers: list[int] = []

    class SpiedPool(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            def spied():
                helpers.append(threading.get_ident())
                with _spying(seen):
                    return fn(*args, **kwargs)

            return super().submit(spied)

    monkeypatch.setattr(batches, "ThreadPoolExecutor", SpiedPool)
    monkeypatch.setattr(batches, "READ_AHEAD_ABOVE_S", 0.0)  # however quick the reads: always read ahead
    config = configure(clips, [video("a", "clips")], train={"train_batch_size": 2}, caption_dropout_probability=0.5)
    data, _ = prepared(config)
    loaded = [data.load_micro_batch(i) for i in range(6)]
    data.close()
    assert len(helpers) >= 5 and threading.get_ident() not in helpers, "batches 1-5 were read ahead on a helper thread"
    assert seen == [], f"torch ops on the prefetch thread: {sorted(set(seen))}"
    # ... and the training thread got the right tensors, stacked.
    for index, (latents, prompts) in enumerate(loaded):
        picked = [data.samples[i] for i in data.batch_indices(index)]
        expected = torch.stack([read_entry(s.latents)["latents"] for s in picked])
        assert torch.equal(latents["latents"], expected) and len(prompts) == 2


def test_quick_reads_stay_on_the_training_thread_and_give_the_same_batches(clips, monkeypatch):
    import tuner.data.batches as batches

    config = configure(clips, [video("a", "clips")], train={"train_batch_size": 2}, caption_dropout_probability=0.5)
    monkeypatch.setattr(batches, "READ_AHEAD_ABOVE_S", float("inf"))
    data, _ = prepared(config)
    inline = [data.load_micro_batch(i) for i in range(5)]
    assert data._pool is None, "no helper thread when reading ahead would not pay"
    monkeypatch.setattr(batches, "READ_AHEAD_ABOVE_S", 0.0)
    data, _ = prepared(config)
    ahead = [data.load_micro_batch(i) for i in range(5)]
    assert data._pool is not None
    data.close()
    for (a_lat, a_txt), (b_lat, b_txt) in zip(inline, ahead):
        assert torch.equal(a_lat["latents"], b_lat["latents"])
        assert all(torch.equal(x["text"], y["text"]) for x, y in zip(a_txt, b_txt))

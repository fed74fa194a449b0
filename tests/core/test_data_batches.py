"""Buckets and batches: repeats, pruning, empty datasets, probability weights, batch order, caption dropout."""

from __future__ import annotations

import pytest
import torch
from data_setup import configure, plan, prepared, video

from tuner.data.batches import epoch_batches
from tuner.data.buckets import prune_buckets
from tuner.data.synthetic import write_synthetic_clips
from tuner.errors import DataError


@pytest.fixture
def clips(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=3, num_frames=5, width=24, height=16)
    return tmp_path


def test_repeats_multiply_the_epoch(clips):
    lengths = []
    for repeats in (0, 1, 2):
        data, _ = prepared(configure(clips, [video("a", "clips", repeats=repeats)], train={"train_batch_size": 1}))
        lengths.append(data.epoch_length)
    # As the guide's tool counts them: repeats 0 shows each sample once, repeats 1 twice.
    assert lengths == [3, 6, 9]


def test_small_buckets_are_pruned_and_reported_unless_disabled(clips):
    write_synthetic_clips(clips / "clips", count=1, num_frames=5, width=16, height=24, prefix="tall")
    backend = [video("a", "clips")]
    config = configure(clips, backend, train={"train_batch_size": 2})
    data, _ = prepared(config)
    assert [b.label for b in data.buckets] == ["20x13@5"]
    assert data.report.pruned == [
        "dataset 'a' bucket 13x20@5: 1 sample(s) x (1 + repeats 0) = 1, fewer than train_batch_size 2 x"
        " gradient_accumulation_steps 1 = 2"
    ]
    assert data.epoch_length == 1, "3 samples, batch 2: one whole batch (the rest is reshuffled next epoch)"
    kept, _ = prepared(configure(clips, backend, train={"train_batch_size": 2}, disable_bucket_pruning=True))
    assert sorted(b.label for b in kept.buckets) == ["13x20@5", "20x13@5"]
    assert kept.epoch_length == 3
    for index in range(6):
        shapes = {kept.samples[i].geometry.shape for i in kept.batch_indices(index)}
        assert len(kept.batch_indices(index)) == 2 and len(shapes) == 1


def test_accumulation_counts_in_the_pruning_threshold(clips):
    config = configure(clips, [video("a", "clips")], train={"train_batch_size": 2, "gradient_accumulation_steps": 2})
    scan, samples, buckets = plan(config)
    assert prune_buckets(buckets, config, scan.report) == []


def test_a_dataset_left_empty_says_so_and_how_to_fix_it(clips):
    config = configure(clips, [video("a", "clips")], train={"train_batch_size": 4})
    with pytest.raises(DataError) as err:
        prepared(config)
    message = str(err.value)
    assert message.startswith("no samples detected in dataset 'a'")
    assert "3 usable, but no bucket reaches train_batch_size 4 x gradient_accumulation_steps 1 = 4" in message
    assert "set repeats to 1 or more" in message and "disable_bucket_pruning" in message
    with pytest.raises(DataError, match=r"skipped: 3 too short.*relax video min_frames/max_frames"):
        prepared(configure(clips, [video("a", "clips", video={"num_frames": 9})]))


def test_probability_weights_which_dataset_comes_first(clips):
    write_synthetic_clips(clips / "other", count=3, num_frames=5, width=24, height=16)
    backend = [video("a", "clips", repeats=9), video("b", "other", repeats=9, probability=0.1)]
    scan, samples, buckets = plan(configure(clips, backend, train={"train_batch_size": 1}))
    order = epoch_batches(buckets, 1, seed=1, epoch=0)
    first_half = [samples[b[0]].dataset for b in order[: len(order) // 2]]
    assert len(order) == 60 and first_half.count("a") > 24
    assert sorted(samples[b[0]].dataset for b in order) == ["a"] * 30 + ["b"] * 30


def test_batches_are_a_pure_function_of_seed_and_index(clips):
    data, _ = prepared(configure(clips, [video("a", "clips")], train={"train_batch_size": 1}))
    epoch0 = [data.batch_indices(i) for i in range(3)]
    assert sorted(sum(epoch0, [])) == [0, 1, 2]
    again, _ = prepared(configure(clips, [video("a", "clips")], train={"train_batch_size": 1}))
    assert [again.batch_indices(i) for i in range(9)] == [data.batch_indices(i) for i in range(9)]
    assert [data.batch_indices(i) for i in range(3, 6)] != epoch0 or [
        data.batch_indices(i) for i in range(6, 9)
    ] != epoch0
    other, _ = prepared(configure(clips, [video("a", "clips")], train={"train_batch_size": 1, "seed": 7}))
    assert [other.batch_indices(i) for i in range(9)] != [data.batch_indices(i) for i in range(9)]


def test_caption_dropout_uses_the_empty_prompt_reproducibly(clips):
    data, _ = prepared(configure(clips, [video("a", "clips")], caption_dropout_probability=0.5))
    drops = [data.dropped_captions(i, 1)[0] for i in range(40)]
    assert 8 < sum(drops) < 32 and drops == [data.dropped_captions(i, 1)[0] for i in range(40)]
    index = drops.index(True)
    _, prompts = data.load_micro_batch(index)
    from tuner.cache.store import read_entry

    assert torch.equal(prompts[0]["text"], read_entry(data.empty_prompt)["text"])
    _, kept = data.load_micro_batch(drops.index(False))
    assert not torch.equal(kept[0]["text"], prompts[0]["text"])
    data.close()

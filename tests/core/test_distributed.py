"""The rank arithmetic of `tuner.distributed`, in one process (the launched runs are in tests/plugins/wan)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tuner.data.batches import total_steps
from tuner.distributed import World, process_group_kwargs


def _worlds(size: int, ga: int = 1) -> list[World]:
    return [World(rank, size, gradient_accumulation_steps=ga) for rank in range(size)]


def test_shards_are_disjoint_and_cover_the_list():
    items = list(range(11))
    shares = [w.shard(items) for w in _worlds(3)]
    assert sorted(x for share in shares for x in share) == items
    assert [len(s) for s in shares] == [4, 4, 3]


@pytest.mark.parametrize("size, ga", [(2, 1), (2, 3), (4, 2)])
def test_processes_see_the_micro_batches_of_one_process_accumulating_for_all(size, ga):
    """Step s of N processes x ga micro-batches trains the same micro-batches (and noise seeds) as step s of
    one process accumulating N x ga: that is what makes the two runs equal."""
    one = World(gradient_accumulation_steps=size * ga)
    for step in range(5):
        many = {w.micro_index(step, m) for w in _worlds(size, ga) for m in range(ga)}
        assert many == {one.micro_index(step, m) for m in range(size * ga)}
        assert len(many) == size * ga  # no micro-batch twice: each process has its own noise


def test_each_epoch_is_split_into_disjoint_shares():
    epoch_length, size = 5, 2  # an odd epoch: a step straddles two epochs
    seen: dict[int, list[int]] = {}
    for w in _worlds(size):
        for step in range(10):
            epoch, within = divmod(w.micro_index(step, 0), epoch_length)
            seen.setdefault(epoch, []).append(within)
    for epoch in range(3):
        assert sorted(seen[epoch]) == list(range(epoch_length))


def test_resuming_on_another_count_continues_the_micro_batch_numbering():
    two = _worlds(2)
    consumed = two[0].consumed(4)  # 4 steps of 2 processes
    assert consumed == 8
    one = World()
    one.resume_at(4, consumed)
    assert [one.micro_index(s, 0) for s in (4, 5)] == [8, 9]
    again = _worlds(2)
    for w in again:
        w.resume_at(4, consumed)
    assert {w.micro_index(4, 0) for w in again} == {t.micro_index(4, 0) for t in two}


def test_global_batch_counts_every_process():
    world = World(0, 4, gradient_accumulation_steps=2)
    assert world.global_batch(3) == 24


def test_total_steps_divides_the_epoch_among_processes(tmp_path):
    from tuner.config import resolve_config
    from tuner.data.synthetic import write_synthetic_clips
    from tuner.plugins import PluginHost
    from tuner.testing.toy import ToyFamily, toy_config

    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    config = resolve_config(toy_config(tmp_path, max_train_steps=0, num_train_epochs=3, train_batch_size=1), host)
    assert total_steps(config, 8, 1) == 24
    assert total_steps(config, 8, 2) == 12


def test_only_the_main_process_acts_through_main():
    calls: list[str] = []

    class Writer:
        def save(self, name: str) -> str:
            calls.append(name)
            return name

    main, other = _worlds(2)
    assert main.main(Writer()).save("a") == "a"
    assert other.main(Writer()).save("b") is None
    assert other.main(lambda: calls.append("c"))() is None
    assert calls == ["a"]


def test_process_group_timeout_reaches_accelerate(toy_run, cli):
    from tuner.config import read_config_file, resolve_config
    from tuner.plugins import PluginHost

    path = toy_run(overrides=["distributed.process_group_timeout=45"])
    config = resolve_config(read_config_file(path), PluginHost.build(["toy"]), base_dir=path.parent)
    handler = process_group_kwargs(config)[0]
    assert handler.timeout == timedelta(seconds=45)
    result = cli(["config", "show", "--config", str(path), "--set", "distributed.process_group_timeout=2"])
    assert result.exit_code == 2 and "process_group_timeout" in result.stderr

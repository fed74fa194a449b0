"""From the ``[data]`` section to a cached, batchable training set: the two calls the run makes.

``scan_samples(config)`` runs before the model loads: it reads the backend file,
lists, captions, probes and hashes the files (reporting and skipping bad ones).
``prepare_samples(...)`` runs once the model is known: it sizes every sample for
the model's strides, forms and prunes the buckets, encodes whatever the caches
lack, and returns a `TrainingData`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.errors import DataError, did_you_mean

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    import torch

    from tuner.config import RunConfig
    from tuner.data.batches import TrainingData
    from tuner.data.buckets import Bucket, PlannedSample
    from tuner.data.scan import DataScan
    from tuner.distributed import World
    from tuner.plugins import PluginHost
    from tuner.types.bundle import ModelBundle
    from tuner.types.training import ClipFeatures

__all__ = ["scan_samples", "prepare_samples", "with_feature_entries"]


def scan_samples(config: RunConfig) -> DataScan:
    """Find the training files and captions; fails fast, before any model loads."""
    from tuner.data.scan import scan_datasets

    return scan_datasets(config)


def _sound(path: Path) -> bool:
    """Whether the entry at ``path`` exists whole; a damaged one (not by us: writes are atomic) is removed."""
    from tuner.cache.store import entry_is_sound, find_entry

    stored = find_entry(path)
    if stored is not None and entry_is_sound(stored):
        return True
    if stored is not None:
        stored.unlink(missing_ok=True)
    return False


def with_feature_entries(samples: list[PlannedSample], features: Sequence[ClipFeatures]) -> list[PlannedSample]:
    """``samples`` with the entries of ``features`` beside their latent entries (keyed by the latent entry's key)."""
    from dataclasses import replace

    from tuner.cache.store import entry_key, entry_path

    if not features:
        return samples

    def paths(s: PlannedSample) -> tuple[Path, ...]:
        latent_key = s.latents.name.split(".", 1)[0]
        return tuple(
            entry_path(s.latents.parent.parent, entry_key(kind="features", latents=latent_key, name=f.name, identity=f.identity))
            for f in features
        )

    return [
        replace(s, features=paths(s), epochs=tuple(replace(e, features=paths(e)) for e in s.epochs)) for s in samples
    ]


def _encode_missing_latents(
    host: PluginHost,
    bundle: ModelBundle,
    config: RunConfig,
    scan: DataScan,
    samples: list[PlannedSample],
    device: torch.device,
    world: World,
    features: Sequence[ClipFeatures] = (),
) -> set[int]:
    """Encode every sample whose latent or feature entries are missing or damaged; return the indices that failed to decode.

    With several processes each encodes its share of the missing entries (every process lists
    them the same way, before any writes), and all wait for the whole cache.
    """
    from tuner.data.encode import LatentJob, build_latents
    from tuner.data.frames import opener_of
    from tuner.data.scan import decode_workers

    todo: dict[str, LatentJob] = {}
    openers = {ds.spec.id: opener_of(ds.backend) for ds in scan.datasets}
    for s in (w for sample in samples for w in sample.windows()):
        if str(s.latents) in todo:  # two datasets (or two epochs' random windows) may share one entry
            continue
        missing = tuple((k, path) for k, path in enumerate(s.features) if not _sound(path))
        latents = not _sound(s.latents)
        if latents or missing:
            todo[str(s.latents)] = LatentJob(
                s.source, s.geometry, s.latents, latents, missing, s.digest, openers[s.dataset]
            )
    for feature in features:  # also when nothing is missing: a feature may free an encoder here
        feature.start(sum(job.latents for job in todo.values()))
    if not todo:
        return set()
    world.barrier()  # every process has its list before any entry is written
    failures: list[tuple[str, str, bool]] = []
    by_entry = {str(w.latents): s for s in samples for w in s.windows()}

    def on_failure(job: LatentJob, reason: str, broken: bool = True) -> None:
        failures.append((str(job.entry), reason, broken))

    data = config.data
    # Shard the shape-sorted list, so that each share holds every shape in turn.
    jobs = world.shard(sorted(todo.values(), key=lambda j: (j.geometry.shape, str(j.source))))
    written = build_latents(
        host,
        bundle,
        jobs,
        vae_batch_size=data.vae_batch_size,
        write_batch_size=data.write_batch_size,
        workers=decode_workers(data),
        compress=data.compress_disk_cache,
        device=device,
        on_failure=on_failure,
        features=features,
    )
    _say_shares(world, written, "clips")
    failures = world.gather(failures)  # everyone waits for the whole cache, and learns every failure

    def forget() -> None:
        for entry, reason, broken in failures:
            sample = by_entry[entry]
            if broken:
                scan.forget_broken(sample.dataset, sample.source, reason)
            else:  # changed since the scan: not broken, and the next scan keys it by its new bytes
                scan.report.skip(sample.dataset, sample.source, reason)

    world.main_first(forget)  # the main process quarantines; the others find the files gone
    failed = {entry for entry, _, _ in failures}
    return {i for i, s in enumerate(samples) if any(str(w.latents) in failed for w in s.windows())}


def _say_shares(world: World, written: int, unit: str) -> None:
    """With several processes: how many entries each encoded (their sum is the number of entries)."""
    counts = world.gather([written])
    if len(counts) > 1:
        from tuner.progress import say

        say(f"cache: {sum(counts)} {unit} encoded by {len(counts)} processes ({' + '.join(map(str, counts))})")


def _encode_missing_texts(
    host: PluginHost, bundle: ModelBundle, config: RunConfig, scan: DataScan, samples: list[PlannedSample], world: World
) -> Path:
    """Encode the captions (and the empty prompt) the text caches lack; return the empty prompt's entry."""
    from tuner.cache.store import entry_is_sound, entry_key, entry_path, find_entry
    from tuner.data.encode import build_texts

    empty = entry_path(scan.layout.default_text_cache, entry_key(kind="text", caption="", encoder=bundle.cache_id))
    wanted = {str(empty): ("", empty)}
    for s in samples:
        wanted.setdefault(str(s.text), (s.caption, s.text))
    todo = []
    for caption, path in wanted.values():
        stored = find_entry(path)
        if stored is not None and entry_is_sound(stored):
            continue
        if stored is not None:
            stored.unlink(missing_ok=True)
        todo.append((caption, path))
    if todo:
        world.main(_report_cut_captions)(bundle, scan, samples, {caption for caption, _ in todo})
        world.barrier()  # every process has its list before any entry is written
        written = build_texts(
            host,
            bundle,
            world.shard(todo),
            text_batch_size=config.data.text_batch_size,
            write_batch_size=scan.layout.text_write_batch_size,
            compress=config.data.compress_disk_cache,
        )
        _say_shares(world, written, "captions")  # also the wait for the whole cache
    return empty


def _report_cut_captions(bundle: ModelBundle, scan: DataScan, samples: list[PlannedSample], captions: set[str]) -> None:
    """Say once, as the captions are encoded, which are longer than the model reads (it sees only the start)."""
    limit = bundle.max_prompt_tokens
    if bundle.count_prompt_tokens is None or not limit:
        return
    ordered = sorted(c for c in captions if c)
    long = {c: n for c, n in zip(ordered, bundle.count_prompt_tokens(ordered)) if n > limit}
    if not long:
        return
    examples = []
    for s in samples:
        if s.caption in long and len(examples) < 3:
            examples.append(f"{s.source.name}: {long.pop(s.caption)} tokens")
    count = len(examples) + len(long)
    scan.report.notice(
        f"{count} caption(s) are longer than the {limit} tokens the model reads and were truncated to {limit}"
        f" tokens (the rest is not seen; e.g. {', '.join(examples)})"
    )


def _hold_out_eval_dataset(
    samples: list[PlannedSample], scan: DataScan, config: RunConfig
) -> tuple[list[PlannedSample], list[PlannedSample]]:
    """``(training, held_out)``: the samples of ``eval_dataset_id`` never train, so they are never bucketed."""
    eval_id = config.section("evaluation").eval_dataset_id
    if not eval_id:
        return samples, []
    ids = [ds.spec.id for ds in scan.datasets]
    if eval_id not in ids:
        raise DataError(
            f"eval_dataset_id '{eval_id}' names no enabled dataset{did_you_mean(eval_id, ids)}; datasets: {', '.join(ids)}"
        )
    if len(ids) == 1:
        raise DataError(f"eval_dataset_id '{eval_id}' is the only dataset: nothing would be left to train on")
    return [s for s in samples if s.dataset != eval_id], [s for s in samples if s.dataset == eval_id]


def _draw_random_windows(
    samples: list[PlannedSample], buckets: list[Bucket], config: RunConfig, scan: DataScan, world: World
) -> list[PlannedSample]:
    """Each ``random`` sample's window for every epoch the run trains (all cached before training starts)."""
    from tuner.data.batches import epoch_length, total_steps
    from tuner.data.buckets import with_epochs

    tc = config.train
    per_epoch = epoch_length(buckets, tc.train_batch_size, not config.data.disable_bucket_pruning)
    micro_batches = total_steps(config, per_epoch, world.size) * tc.gradient_accumulation_steps * world.size
    epochs = max(1, -(-micro_batches // max(1, per_epoch)))
    drawn = with_epochs(samples, epochs)
    for ds in scan.datasets:
        if ds.spec.frame_extraction == "random":
            mine = [s for s in drawn if s.dataset == ds.spec.id]
            windows = len({w.latents for s in mine for w in s.windows()})
            scan.report.clips.append(
                f"dataset '{ds.spec.id}': frame_extraction random: a fresh window each of the run's {epochs}"
                f" epoch(s), {windows} window(s) in all (cached before training)"
            )
    return drawn


def prepare_samples(
    host: PluginHost,
    bundle: ModelBundle,
    config: RunConfig,
    scan: DataScan,
    device: torch.device,
    world: World | None = None,
) -> TrainingData:
    """Size, bucket and cache the scanned samples; fail for a dataset left without samples.

    :param world: the processes of the run, which share the encoding (default: this one alone).
    """
    from tuner.cache.store import clean_partials
    from tuner.data.batches import TrainingData
    from tuner.data.buckets import check_datasets, make_buckets, plan_samples, prune_buckets
    from tuner.distributed import World

    world = world or World()

    def clean_temporaries() -> None:
        # Temporary files of a process that died mid-write (its entries are encoded again where missing).
        for folder in {f for ds in scan.datasets for f in (ds.spec.vae_cache, ds.spec.text_cache)}:
            clean_partials(folder)
        clean_partials(scan.layout.default_text_cache)

    world.main(clean_temporaries)()
    world.barrier()  # before any process writes an entry
    report = scan.report
    quarantining = config.data.delete_problematic_images
    samples, held_out = _hold_out_eval_dataset(plan_samples(scan, bundle, config), scan, config)
    # Prune before encoding: nothing is encoded for a bucket that will not train.
    buckets = prune_buckets(make_buckets(samples, scan), config, report)
    report.print_new_skips("filtered", quarantining)
    world.main(report).write(scan.report_path)  # the main process writes the data report
    check_datasets(scan, samples, buckets, config)
    training = {i for b in buckets for i in b.members}
    samples = [s for i, s in enumerate(samples) if i in training]
    if any(s.redraw is not None for s in samples):
        samples = _draw_random_windows(samples, buckets, config, scan, world)
    features = host.clip_features(bundle, config)
    samples, held_out = with_feature_entries(samples, features), with_feature_entries(held_out, features)
    try:
        failed = _encode_missing_latents(host, bundle, config, scan, samples + held_out, device, world, features)
    finally:
        for feature in features:
            feature.done()
    # Bucket again over what trains (without files found broken while decoding).
    held_out = [s for i, s in enumerate(held_out, len(samples)) if i not in failed]
    samples = [s for i, s in enumerate(samples) if i not in failed]
    buckets = prune_buckets(make_buckets(samples, scan), config, report)
    report.print_new_skips("decoding", quarantining)
    world.main(report).write(scan.report_path)  # the main process writes the data report
    check_datasets(scan, samples, buckets, config)
    eval_id = config.section("evaluation").eval_dataset_id
    if eval_id and not held_out:
        raise DataError(f"eval_dataset_id '{eval_id}' has no usable samples (details in {scan.report_path})")
    if held_out:
        report.buckets.append(f"dataset '{eval_id}': {len(held_out)} sample(s) held out for the evaluation loss")
    empty = _encode_missing_texts(host, bundle, config, scan, samples + held_out, world)
    report.print_buckets()
    tc = config.train

    def rebucket(kept: list[PlannedSample]) -> list[Bucket]:
        buckets = prune_buckets(make_buckets(kept, scan), config, report)
        check_datasets(scan, kept, buckets, config)
        return buckets

    # Held-out samples come last: the buckets index the training samples before them.
    return TrainingData(
        samples + held_out,
        buckets,
        batch_size=tc.train_batch_size,
        seed=tc.seed,
        prune=not config.data.disable_bucket_pruning,
        caption_dropout=config.data.caption_dropout_probability,
        empty_prompt=empty,
        report=report,
        rebucket=rebucket,
    )

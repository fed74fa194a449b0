"""Datasets: from a backend file (or one folder) to same-shape batches of cached samples.

The run calls `tuner.data.prepare.scan_samples` before the model loads and
`tuner.data.prepare.prepare_samples` after; the rest, in the order data flows:
``backends`` (the backend file's keys) and ``layout`` (defaults resolved),
``storage`` (the `DataBackend` contract a dataset's ``type`` names), ``local``/``metadata``
(the core's two backends), ``captions``/``probe`` (captions, sizes and digests), ``scan``
and ``report``/``quarantine`` (skipping and listing bad files), ``sizing`` and
``buckets`` (frames, sizes, crops, buckets, pruning), ``frames`` (decoding),
``encode`` (filling the caches), ``batches`` (the pure batch order and `TrainingData`).
"""

"""Datasets: finding clips and captions, decoding frames, batching cached samples."""

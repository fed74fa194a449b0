"""Captions: the strategies, metadata files, missing and non-UTF-8 caption files."""

from __future__ import annotations

import json

import pytest
from data_setup import configure, video

from tuner.data.captions import decode_caption
from tuner.data.prepare import scan_samples
from tuner.data.synthetic import write_synthetic_clips


@pytest.fixture
def clips(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=3, num_frames=5, width=24, height=16)
    return tmp_path


def test_caption_strategies(clips):
    def captions(**extra):
        scan = scan_samples(configure(clips, [video("a", "clips", **extra)]))
        return [f.caption for f in scan.datasets[0].files]

    assert captions()[0] == "a red square moving right on a black background"
    assert captions(caption_strategy="filename")[0] == "clip 000"
    assert set(captions(caption_strategy="instanceprompt", instance_prompt="sks style")) == {"sks style"}


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_metadata_file_captions(clips, kind):
    rows = [("clip_000.mp4", "from the table"), ("clip_001", ""), ("sub/none.mp4", "no such file")]
    if kind == "jsonl":
        text = "\n".join(json.dumps({"file_name": f, "caption": c, "tags": "fallback tags"}) for f, c in rows)
    else:
        text = "file_name,caption,tags\n" + "\n".join(f"{f},{c},fallback tags" for f, c in rows)
    (clips / f"meta.{kind}").write_text(text)
    block = {"path": f"meta.{kind}", "fallback_caption_column": "tags"}
    scan = scan_samples(configure(clips, [video("a", "clips", caption_strategy="parquet", parquet=block)]))
    got = {f.path.name: f.caption for f in scan.datasets[0].files}
    assert got == {"clip_000.mp4": "from the table", "clip_001.mp4": "fallback tags"}
    (skip,) = scan.report.skipped
    assert skip.path.name == "clip_002.mp4" and "no row in meta" in skip.reason


def test_missing_or_empty_caption_files_are_skipped_with_the_rule(clips):
    (clips / "clips" / "clip_001.txt").unlink()
    (clips / "clips" / "clip_002.txt").write_text("  \n")
    scan = scan_samples(configure(clips, [video("a", "clips")]))
    assert [f.path.name for f in scan.datasets[0].files] == ["clip_000.mp4"]
    reasons = {s.path.name: s.reason for s in scan.report.skipped}
    assert "no caption file clip_001.txt; add it, or set caption_strategy to 'filename'" in reasons["clip_001.mp4"]
    assert "empty caption file clip_002.txt" in reasons["clip_002.mp4"]


def test_non_utf8_captions_are_read():
    assert decode_caption("caf\xe9 scene".encode("latin-1")) == ("café scene", "not UTF-8: read as Windows-1252")
    assert decode_caption("caf\xe9".encode("utf-16"))[0] == "café"
    assert decode_caption("\ufeffcafé".encode("utf-8")) == ("café", None)


def test_non_utf8_caption_file_in_a_scan(clips):
    (clips / "clips" / "clip_000.txt").write_bytes("caf\xe9 scene".encode("latin-1"))
    scan = scan_samples(configure(clips, [video("a", "clips")]))
    assert scan.datasets[0].files[0].caption == "café scene"

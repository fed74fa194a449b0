"""Bad files in a dataset: skipped and listed, quarantined, missing folders; decoded pixels match the plan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_setup import configure, plan, prepared, video

from tuner.data.prepare import scan_samples
from tuner.data.synthetic import write_broken_files, write_synthetic_clips
from tuner.errors import DataError


@pytest.fixture
def clips(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=3, num_frames=5, width=24, height=16)
    return tmp_path


def test_broken_files_are_skipped_and_listed_never_crash(clips, capsys):
    write_broken_files(clips / "clips", num_frames=5, width=24, height=16)
    config = configure(clips, [video("a", "clips")])
    data, family = prepared(config)
    assert sorted(s.source.name for s in data.samples) == ["clip_000.mp4", "clip_001.mp4", "clip_002.mp4"]
    broken = {s.path.name: s.reason for s in data.report.skipped if s.broken}
    assert set(broken) == {"empty.mp4", "garbage.mp4", "truncated_tail.mp4", "truncated_frames.mp4", "truncated.png"}
    assert broken["empty.mp4"] == "empty file (0 bytes)"
    # the header lists more frames than the file holds: found while probing
    assert broken["truncated_frames.mp4"].startswith("truncated: its header lists 5 frames")
    err = capsys.readouterr().err
    assert "scan: 5 file(s) of dataset 'a' skipped" in err
    assert "delete_problematic_images = true moves such files" in err
    report = json.loads((clips / "cache" / "data_report.json").read_text())
    assert {Path(s["path"]).name for s in report["skipped"]} == set(broken)
    # A second start remembers them: nothing is decoded again.
    again, family2 = prepared(config)
    assert "encode_batch" not in family2.calls
    assert {s.path.name for s in again.report.skipped} == set(broken)


def test_delete_problematic_images_moves_them_to_quarantine(clips):
    files = write_broken_files(clips / "clips", num_frames=5, width=24, height=16)
    data, _ = prepared(configure(clips, [video("a", "clips")], delete_problematic_images=True))
    quarantine = clips / "clips" / ".tuner-quarantine"
    for name, path in files.items():
        assert not path.exists() and (quarantine / name).is_file(), name
        assert (quarantine / name).with_suffix(".txt").is_file(), "the caption moves along"
    log = [json.loads(line) for line in (quarantine / "quarantine.jsonl").read_text().splitlines()]
    assert {r["file"] for r in log} == set(files) and all(r["reason"] for r in log)
    again, _ = prepared(configure(clips, [video("a", "clips")], delete_problematic_images=True))
    assert not again.report.skipped, "quarantined files are not seen again"


def test_the_shorthand_still_works_and_reports_missing_folders(clips, tmp_path):
    data, family = prepared(configure(clips, None, num_frames=5, resolution=16))
    assert len(data.samples) == 3 and family.calls["encode_batch"] == 3
    with pytest.raises(DataError, match="data.instance_data_dir does not exist or is not a folder"):
        scan_samples(configure(clips, None, instance_data_dir=str(tmp_path / "nope")))
    with pytest.raises(DataError, match="no clips or images found"):
        (tmp_path / "empty").mkdir()
        scan_samples(configure(clips, None, instance_data_dir=str(tmp_path / "empty")))


def test_decoded_pixels_match_the_geometry(clips):
    from tuner.data.frames import decode_sample, to_pixels

    scan, samples, _ = plan(configure(clips, [video("a", "clips", resolution=16, video={"num_frames": 5})]))
    frames = decode_sample(samples[0].source, samples[0].geometry)
    assert frames.shape == (5, 13, 20, 3) and frames.dtype == np.uint8  # 24x16 at the area of 16x16
    pixels = to_pixels(frames)
    assert pixels.shape == (5, 3, 13, 20) and pixels.min() >= -1 and pixels.max() <= 1

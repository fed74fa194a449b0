"""Finding clips and captions, decoding frames, ordering batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tuner.data.batches import batch_indices
from tuner.data.frames import fit_square, read_frames
from tuner.data.local import scan_folder
from tuner.data.synthetic import write_synthetic_clips
from tuner.errors import DataError


@pytest.fixture
def clips(tmp_path):
    write_synthetic_clips(tmp_path, count=3, num_frames=9, width=40, height=24)
    return tmp_path


def test_textfile_captions(clips):
    samples = scan_folder(clips, "textfile")
    assert [s.path.name for s in samples] == ["clip_000.mp4", "clip_001.mp4", "clip_002.mp4"]
    assert samples[0].caption == "a red square moving right on a black background"


def test_filename_and_instanceprompt_captions(clips):
    assert scan_folder(clips, "filename")[0].caption == "clip 000"
    assert {s.caption for s in scan_folder(clips, "instanceprompt", "sks style")} == {"sks style"}


def test_missing_caption_names_the_file_and_the_fix(clips):
    (clips / "clip_001.txt").unlink()
    with pytest.raises(DataError, match="clip_001.mp4 needs clip_001.txt.*caption_strategy"):
        scan_folder(clips, "textfile")


def test_non_utf8_caption_is_read(clips):
    (clips / "clip_000.txt").write_bytes("caf\xe9 scene".encode("latin-1"))
    assert scan_folder(clips, "textfile")[0].caption == "café scene"


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DataError, match="no clips or images found"):
        scan_folder(tmp_path, "textfile")
    with pytest.raises(DataError, match="does not exist"):
        scan_folder(tmp_path / "nope", "textfile")


def test_frames_decode_and_fit(clips):
    frames = read_frames(clips / "clip_000.mp4", 9)
    assert frames.shape == (9, 24, 40, 3) and frames.dtype == np.uint8
    fitted = fit_square(frames, 16)
    assert fitted.shape == (9, 3, 16, 16)
    assert fitted.min() >= -1 and fitted.max() <= 1


def test_too_short_clip_is_a_clear_error(clips):
    with pytest.raises(DataError, match="has 9 frames, fewer than data.num_frames = 17"):
        read_frames(clips / "clip_000.mp4", 17)


def test_batch_order_is_a_seeded_permutation_per_epoch():
    epoch0 = [batch_indices(i, 6, 2, seed=1) for i in range(3)]
    assert sorted(sum(epoch0, [])) == list(range(6))
    assert epoch0 == [batch_indices(i, 6, 2, seed=1) for i in range(3)]
    epoch1 = [batch_indices(i, 6, 2, seed=1) for i in range(3, 6)]
    assert epoch1 != epoch0
    assert [batch_indices(i, 6, 2, seed=2) for i in range(3)] != epoch0
    with pytest.raises(DataError, match="cannot fill one batch"):
        batch_indices(0, 1, 2, seed=1)


def test_images_are_one_frame_clips(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert read_frames(tmp_path / "a.png", 17).shape == (1, 20, 30, 3)
    assert torch.is_tensor(fit_square(read_frames(tmp_path / "a.png", 1), 8))

"""Reliability, round two: hostile or damaged inputs end in one line, never a traceback, a hang or a leak.

Each test meets the real failure: a real redirecting server, real symlinks and FIFOs, real processes.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tuner import hookimpl
from tuner.config import read_config_file, resolve_config
from tuner.data.captions import MetadataCaptions, read_caption_file
from tuner.data.prepare import scan_samples
from tuner.data.synthetic import write_synthetic_clips
from tuner.errors import ConfigError, DataError
from tuner.plugins import PluginHost
from tuner.report.delivery import Delivery, Post
from tuner.report.webhooks import read_webhook_config
from tuner.testing.toy import ToyFamily, toy_config
from tuner.train.run import train


@contextmanager
def _server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_webhook_token_never_follows_a_redirect_to_another_host():
    seen: list[tuple[str, str | None]] = []
    ports: dict[str, int] = {}

    class Endpoint(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            seen.append((self.headers.get("Host", ""), self.headers.get("Authorization")))
            # /cross: another host name (localhost, not 127.0.0.1) and port; /same: this very origin.
            target = {"/cross": f"http://localhost:{ports['other']}/end", "/same": f"http://127.0.0.1:{ports['first']}/end"}
            self.send_response(302 if self.path in target else 200)
            if self.path in target:
                self.send_header("Location", target[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    with _server(Endpoint) as ports["first"], _server(Endpoint) as ports["other"]:
        for path in ("/cross", "/same"):
            seen.clear()
            url = f"http://127.0.0.1:{ports['first']}{path}"
            delivery = Delivery(url, "webhook 1 (raw)", headers={"Authorization": "Bearer s3cret"}, retries=0)
            delivery.post(Post(json_body={"event": "start"}))
            delivery.stop(10)
            delivery.join()
            assert delivery.sent == 1
            if path == "/cross":  # urllib alone re-sends the token to the second host
                assert seen == [(f"127.0.0.1:{ports['first']}", "Bearer s3cret"), (f"localhost:{ports['other']}", None)]
            else:
                assert [auth for _, auth in seen] == ["Bearer s3cret"] * 2


def _finishes(call, seconds: float = 20.0):
    """``call()``'s result, or a failure when it has not returned in ``seconds`` (a hang)."""
    out: list = []

    def work():
        try:
            out.append(("ok", call()))
        except BaseException as exc:  # handed to the test thread
            out.append(("raised", exc))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
    assert out, f"still running after {seconds} s: it hangs"
    kind, value = out[0]
    if kind == "raised":
        raise value
    return value


def test_a_fifo_as_caption_or_metadata_file_never_hangs_the_scan(tmp_path):
    fifo = tmp_path / "clip.txt"
    os.mkfifo(fifo)
    try:
        caption, note = _finishes(lambda: read_caption_file(fifo))
        assert caption is None and "not a regular file" in note
        os.mkfifo(tmp_path / "rows.jsonl")
        with pytest.raises(DataError, match="not a regular file"):
            _finishes(lambda: MetadataCaptions(tmp_path / "rows.jsonl", "file_name", "caption", None, None))
        os.mkfifo(tmp_path / "config.toml")
        with pytest.raises(ConfigError, match="not a regular file"):
            _finishes(lambda: read_config_file(tmp_path / "config.toml"))
    finally:  # a hung reader (old code) is released
        for name in ("clip.txt", "rows.jsonl", "config.toml"):
            if (tmp_path / name).exists():
                fd = os.open(tmp_path / name, os.O_RDWR)
                os.close(fd)


@pytest.mark.parametrize(
    "text, message",
    [
        ("a" + ".a" * 100_000 + " = 1\n", "line 1 has a dotted key of more than 32 parts"),
        ("[train]\n" + "x = 1\n" * 200_000, "larger than 1024 KiB"),
        ("[train]\n" + "[" * 100_000, "nested too deeply|invalid TOML"),
    ],
    ids=["100k-part dotted key", "1.2 MB", "deep arrays"],
)
def test_a_pathological_config_is_refused_in_one_line_before_parsing(tmp_path, text, message):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        _finishes(lambda: read_config_file(path))  # today's parser takes minutes on the first


def test_a_key_given_twice_in_json_is_refused_not_silently_the_last(tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{"train": {"learning_rate": 1e-4, "learning_rate": 1.0}}')
    with pytest.raises(ConfigError, match="'learning_rate' appears twice"):
        read_config_file(config)
    webhook = tmp_path / "webhook.json"
    webhook.write_text('{"webhook_url": "http://127.0.0.1:9/a", "webhook_url": "http://example.com/b"}')
    with pytest.raises(ValueError, match="'webhook_url' appears twice"):
        read_webhook_config(webhook)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"file_name": "a.mp4", "caption": "one", "caption": "two"}\n')
    with pytest.raises(DataError, match="'caption' appears twice"):
        MetadataCaptions(rows, "file_name", "caption", None, None)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("rows.json", "[1, 2]", "row 1 is not an object"),
        ("rows.jsonl", '{"file_name": ["a.mp4"], "caption": "x"}', "row 1: 'file_name' is not a file name"),
        ("rows.jsonl", '{"file_name": "a.mp4", "caption": {"x": 1}}', "row 1: the caption is not text"),
        ("rows.jsonl", "[" * 100_000, "nested too deeply"),
        ("rows.csv", 'file_name,caption\na.mp4,"' + "x" * 200_000 + '"\n', "not readable as CSV"),
    ],
    ids=["numbers", "a list as name", "an object as caption", "deep", "huge CSV field"],
)
def test_damaged_but_parseable_caption_metadata_is_one_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=message):
        MetadataCaptions(tmp_path / name, "file_name", "caption", None, None)


def _toy_scan(tmp_path, **data):
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    cfg = toy_config(tmp_path)
    cfg["data"].update(data)
    return scan_samples(resolve_config(cfg, host))


def test_a_dangling_symlink_among_many_clips_is_reported_not_a_traceback(tmp_path, capsys):
    root = tmp_path / "clips"
    write_synthetic_clips(root, count=1, num_frames=3, width=16, height=16)
    clip = next(root.glob("*.mp4"))
    for n in range(70):  # past the count that shows a progress bar (which stats every file first)
        (root / f"copy_{n:03d}.mp4").symlink_to(clip)
        (root / f"copy_{n:03d}.txt").write_text("a toy")
    (root / "gone.mp4").symlink_to(tmp_path / "deleted.mp4")
    (root / "gone.txt").write_text("a toy")
    os.mkfifo(root / "pipe.mp4")
    (root / "pipe.txt").write_text("a toy")
    scan = _finishes(lambda: _toy_scan(tmp_path, delete_problematic_images=True))
    assert len(scan.datasets[0].files) == 71
    skipped = {s.path.name: s.reason for s in scan.report.skipped}
    assert skipped == {"gone.mp4": "a symbolic link that leads nowhere", "pipe.mp4": "not a regular file (a pipe, a socket or a device)"}
    assert (root / "gone.mp4").is_symlink()  # a link to nothing is left alone


def test_a_damaged_but_parseable_file_index_is_probed_again(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    first = _toy_scan(tmp_path)
    index = first.datasets[0].index.path
    data = json.loads(index.read_text())
    names = sorted(data["files"])
    data["files"][names[0]]["info"] = ["16", -3, None]  # parses, but no picture size
    data["files"][names[1]] = "not a record"
    index.write_text(json.dumps(data))
    again = _toy_scan(tmp_path)
    assert [(f.path, f.info, f.digest) for f in again.datasets[0].files] == [(f.path, f.info, f.digest) for f in first.datasets[0].files]
    index.write_text(json.dumps({"version": 2, "files": [1, 2]}))
    assert len(_toy_scan(tmp_path).datasets[0].files) == 2


def test_a_left_over_partial_of_the_data_report_never_stands_in_the_way(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    cache = tmp_path / "cache"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # This process's id (a container reuses it) as a folder, and a dead writer's file.
    (cache / f".data_report.json.{os.getpid()}.partial").mkdir(parents=True)
    (cache / f".data_report.json.{dead.pid}.partial").write_text("{half")
    scan = _toy_scan(tmp_path)
    assert json.loads(scan.report_path.read_text())["skipped"] == []
    assert sorted(p.name for p in cache.glob(".data_report*")) == []


class _ReplacesAClip(ToyFamily):
    """Replaces a clip with other bytes after the scan, before the cache is built (while the model loads)."""

    def __init__(self, clip, replacement):
        super().__init__()
        self.clip, self.replacement = clip, replacement

    @hookimpl
    def load_model(self, config, device):
        if self.replacement.exists():
            os.replace(self.replacement, self.clip)
        return super().load_model(config, device)


def _entries_of(cache, clip):
    from safetensors import safe_open

    found = []
    for entry in cache.rglob("*.safetensors"):
        with safe_open(str(entry), "pt") as f:
            if (f.metadata() or {}).get("source") == str(clip):
                found.append(entry.name)
    return found


def test_a_clip_replaced_between_scan_and_encoding_is_never_cached_under_the_old_key(tmp_path):
    clips = write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    other = write_synthetic_clips(tmp_path / "other", count=3, num_frames=3, width=16, height=16, captions=False)[2]
    family = _ReplacesAClip(clips[0], other)
    host = PluginHost.build([], extra={"toy": family})
    cfg = toy_config(tmp_path, max_train_steps=1)
    cfg["validation"]["validation_prompt"] = None
    train(resolve_config(cfg, host), host)
    report = json.loads((tmp_path / "cache" / "data_report.json").read_text())
    assert [(s["path"], "changed since the scan" in s["reason"], s["broken"]) for s in report["skipped"]] == [(str(clips[0]), True, False)]
    assert _entries_of(tmp_path / "cache", clips[0]) == [], "nothing is stored under the earlier bytes' key"
    assert clips[0].exists(), "a changed clip is not broken: never quarantined"

    host = PluginHost.build([], extra={"toy": family})
    cfg["train"]["output_dir"] = str(tmp_path / "again")
    train(resolve_config(cfg, host), host)  # the next run keys it by the bytes it now holds
    assert len(_entries_of(tmp_path / "cache", clips[0])) == 1


def test_a_file_is_hashed_once_per_build_for_all_its_windows_and_a_replaced_one_is_still_caught(tmp_path, monkeypatch):
    import hashlib

    from tuner.data import frames, probe
    from tuner.data.sizing import Geometry

    clip, other = write_synthetic_clips(tmp_path / "clips", count=2, num_frames=6, width=16, height=16, captions=False)
    digest = hashlib.sha256(clip.read_bytes()).hexdigest()
    geometry = Geometry(frames=2, width=16, height=16, resize=(16, 16), crop=(0, 0), aspect=1.0)
    hashed: list[int] = []
    real = hashlib.sha256
    monkeypatch.setattr(probe.hashlib, "sha256", lambda *a: hashed.append(1) or real(*a))
    verified: dict = {}
    for _ in range(3):  # three windows of one file in one build
        assert frames.decode_sample(clip, geometry, digest=digest, verified=verified).shape == (2, 16, 16, 3)
    assert len(hashed) == 1, "the file's bytes are read for the hash once, not once per window"

    clip.write_bytes(other.read_bytes())  # replaced between two windows
    with pytest.raises(frames.SourceChanged):
        frames.decode_sample(clip, geometry, digest=digest, verified=verified)
    assert len(hashed) == 2, "a file whose size, time or inode moved is hashed again"


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("train", "seed", 2**64, "train.seed = 18446744073709551616 is out of range"),
        ("validation", "validation_seed", -(2**70), "validation.validation_seed = -1180591620717411303424 is out of range"),
        ("validation", "validation_resolution", "100000x100000", "at most 16384 pixels"),
        ("validation", "validation_fps", 10**9, "validation.validation_fps: Input should be less than or equal to 240"),
        ("data", "resolution", 1e9, "data.resolution: Input should be less than or equal to 16384"),
        ("distributed", "process_group_timeout", 10**15, "process_group_timeout: Input should be less than or equal to 604800"),
        ("train", "max_train_steps", 10**20, "max_train_steps: Input should be less than or equal to 1000000000"),
    ],
    ids=["seed", "validation seed", "validation size", "fps", "resolution", "timeout", "steps"],
)
def test_numbers_that_would_crash_training_are_refused_when_the_config_loads(tmp_path, section, key, value, message):
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    cfg = toy_config(tmp_path)
    cfg.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_config(cfg, host)  # what `tuner config show` runs


def test_a_megapixel_resolution_too_large_to_fit_stops_the_scan_in_one_line(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=1, num_frames=3, width=16, height=16)
    with pytest.raises(DataError, match="resolution 5000 is more than 268 megapixels"):
        _toy_scan(tmp_path, resolution=5000, resolution_type="area")


@pytest.mark.parametrize("key", ["tracker_project_name", "tracker_run_name"])
@pytest.mark.parametrize("name", ["../../escaped", "/tmp/abs", "a\\b", "..", "x\ny"])
def test_tracker_names_are_names_never_paths_out_of_output_dir(tmp_path, key, name):
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    cfg = toy_config(tmp_path)
    cfg["tracking"] = {key: name}
    with pytest.raises(ConfigError, match=f"tracking.{key}: .*a name, not a path"):
        resolve_config(cfg, host)


def _trained_toy(tmp_path, name="out", **options):
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    cfg = toy_config(tmp_path, **{"max_train_steps": 1, **options})
    cfg["train"]["output_dir"] = str(tmp_path / name)
    cfg["validation"]["validation_prompt"] = None
    return train(resolve_config(cfg, host), host)


def _latent_entries(tmp_path):
    return sorted((tmp_path / "cache" / "vae").rglob("*.safetensors"))


def test_nan_in_a_damaged_cache_entry_is_named_not_blamed_on_the_learning_rate(tmp_path):
    from safetensors.torch import load_file, save_file

    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    _trained_toy(tmp_path)
    for entry in _latent_entries(tmp_path):  # still whole safetensors files: only the values are damaged
        tensors = load_file(entry)
        save_file({k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in tensors.items()}, entry)
    with pytest.raises(DataError) as err:
        _trained_toy(tmp_path, name="again")
    message = str(err.value)
    assert "\n" not in message and "not the learning rate" in message and str(_latent_entries(tmp_path)[0].parent) in message


def test_a_cache_entry_that_parses_but_lacks_a_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    _trained_toy(tmp_path)
    damaged = _latent_entries(tmp_path)[1]
    tensors = load_file(damaged)
    save_file({f"renamed_{k}": v for k, v in tensors.items()}, damaged)
    with pytest.raises(DataError, match=f"cache entry {re.escape(str(damaged))} .* it is damaged"):
        _trained_toy(tmp_path, name="again", max_train_steps=4)


_OOM = """
import resource, sys
from pathlib import Path
import torch  # the address space measured beside
from tuner.data.batches import _read_bytes
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
try:
    _read_bytes(Path(sys.argv[1]), Path("clip.mp4"))
except MemoryError:
    print("MemoryError")
except Exception as exc:
    print(type(exc).__name__, exc)
else:
    print("read it whole")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS")
def test_running_out_of_memory_while_reading_the_cache_is_not_called_a_damaged_entry(tmp_path):
    import gzip

    import torch
    from safetensors.torch import save

    entry = tmp_path / "ab" / "abcd.safetensors.gz"
    entry.parent.mkdir()
    entry.write_bytes(gzip.compress(save({"latents": torch.zeros(64 * 1024 * 1024, dtype=torch.uint8)}), 1))
    script = tmp_path / "oom.py"
    script.write_text(_OOM)
    # The address space the interpreter and torch take, plus far less than the 64 MB the entry unpacks to.
    probe = subprocess.run(
        [sys.executable, "-c", "import tuner.data.batches, torch; print(open('/proc/self/status').read().split('VmSize:')[1].split()[0])"],
        capture_output=True, text=True,
    )  # fmt: skip
    limit = int(probe.stdout.strip()) * 1024 + 16 * 1024 * 1024
    result = subprocess.run([sys.executable, str(script), str(entry.with_suffix("")), str(limit)], capture_output=True, text=True)
    assert result.stdout.strip() == "MemoryError", result.stdout + result.stderr[-2000:]


class _ReadOnlyAfter(ToyFamily):
    """Makes the output folder read-only at the end of a step: a read-only bind mount over it."""

    def __init__(self, folder, step):
        super().__init__()
        self.folder, self.step = folder, step

    @hookimpl
    def on_step_end(self, run, step, logs):
        if step == self.step:
            subprocess.run(["mount", "--bind", str(self.folder), str(self.folder)], check=True)
            subprocess.run(["mount", "-o", "remount,bind,ro", str(self.folder)], check=True)


def test_an_output_folder_made_read_only_mid_run_ends_in_one_line(tmp_path, capsys):
    import typer

    from tuner.commands.errors import friendly_errors

    out = tmp_path / "out"
    out.mkdir()
    probe = tmp_path / "probe"
    probe.mkdir()
    if subprocess.run(["mount", "--bind", str(probe), str(probe)], capture_output=True).returncode:
        pytest.skip("needs a bind mount (a real read-only file system)")
    subprocess.run(["umount", str(probe)], check=True)
    try:
        write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
        host = PluginHost.build([], extra={"toy": _ReadOnlyAfter(out, 1)})
        cfg = toy_config(tmp_path, max_train_steps=4, checkpoint_step_interval=2)
        cfg["validation"]["validation_prompt"] = None
        with pytest.raises(typer.Exit) as stop:
            friendly_errors(lambda: train(resolve_config(cfg, host), host))()  # as `tuner train` runs it
        err = capsys.readouterr().err
        assert stop.value.exit_code == 2 and "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"error: {out}") and "Read-only file system: tuner cannot write there" in last, last
    finally:
        subprocess.run(["umount", "-l", str(out)], capture_output=True)

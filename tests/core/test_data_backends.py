"""Data backends: a plugin adds a kind of dataset storage through `register_data_backends`, the core does the rest."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pytest
from PIL import Image

from tuner import hookimpl
from tuner.config import resolve_config
from tuner.data.layout import DatasetSpec, load_layout
from tuner.data.local import LocalFiles
from tuner.data.storage import MEDIA_EXTENSIONS, DataBackend, MediaListing
from tuner.data.synthetic import write_synthetic_clips
from tuner.errors import DataError, PluginError
from tuner.plugins import PluginHost
from tuner.report.jsonlog import read_log
from tuner.testing.toy import ToyFamily, toy_config
from tuner.train.run import train


class ZipFiles(DataBackend):
    """``type: zip``: the dataset is one .zip file (``instance_data_dir``); its members are read in memory."""

    description = "the clips and captions of one zip archive"

    def list_files(self, spec: DatasetSpec) -> MediaListing:
        if not zipfile.is_zipfile(spec.root):
            raise DataError(f"{spec.where}: {spec.root} is no zip file")
        with zipfile.ZipFile(spec.root) as archive:
            names = [n for n in archive.namelist() if Path(n).suffix.lower() in MEDIA_EXTENSIONS]
        return MediaListing(files=sorted(spec.root / n for n in names))

    def open(self, path: Path) -> BinaryIO:
        archive = next(p for p in path.parents if p.suffix == ".zip")
        with zipfile.ZipFile(archive) as z:
            try:
                return io.BytesIO(z.read(path.relative_to(archive).as_posix()))
            except KeyError:
                raise FileNotFoundError(path) from None


class ZipPlugin:
    """A third party's plugin: nothing in the core names it."""

    @hookimpl
    def register_data_backends(self, register: Any) -> None:
        register("zip", ZipFiles())


def _zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.iterdir()):
            z.write(path, f"clips/{path.name}")
    return archive


def _backend_file(folder: Path, entries: list[dict[str, Any]]) -> Path:
    path = folder / "backend.json"
    path.write_text(json.dumps(entries))
    return path


def _zip_config(folder: Path, **train_options: Any) -> dict[str, Any]:
    config = toy_config(folder, **train_options)
    dataset = {"id": "zipped", "type": "zip", "dataset_type": "video", "instance_data_dir": str(folder / "clips.zip")}
    config["data"] = {
        "data_backend_config": str(_backend_file(folder, [{**dataset, "video": {"num_frames": 3}}])),
        "num_frames": 3,
        "resolution": 16,
        "cache_dir": str(folder / "cache"),
    }
    return config


def test_hook_register_data_backends_trains_the_toy_family_from_a_zip_file(tmp_path):
    write_synthetic_clips(tmp_path / "loose", count=2, num_frames=3, width=16, height=16)
    _zip_folder(tmp_path / "loose", tmp_path / "clips.zip")
    family = ToyFamily()
    host = PluginHost.build([], extra={"toy": family, "zipped": ZipPlugin()})
    assert host.data_backend_owner == {"local": "core", "metadata": "core", "zip": "zipped"}
    train(resolve_config(_zip_config(tmp_path), host), host)
    losses = [r["loss"] for r in read_log(tmp_path / "out") if r["event"] == "step"]
    assert len(losses) == 40 and np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    assert family.calls["encode_batch"] == 2  # both clips cached, captions read from the .txt members
    assert len(list((tmp_path / "cache" / "vae" / "zipped").rglob("*.safetensors"))) == 2
    assert len(list((tmp_path / "cache" / "text").rglob("*.safetensors"))) == 3  # two captions and the empty one
    # A second run finds every entry: the zip's members are keyed by their bytes, as files are.
    train(resolve_config(_zip_config(tmp_path, max_train_steps=2, overwrite_output_dir=True), host), host)
    assert family.calls["encode_batch"] == 2


def test_tuner_plugins_lists_each_plugins_data_backends(cli, toy_installed):
    infos = {i["name"]: i for i in json.loads(cli(["plugins", "--json"]).output)}
    assert infos["core"]["data_backends"] == ["local", "metadata"] and infos["toy"]["data_backends"] == []
    assert "register_data_backends" not in infos["core"]["hooks"]  # shown by what it registered
    described = {i.name: i for i in PluginHost.build([], extra={"zipped": ZipPlugin()}).describe()}
    assert described["zipped"].data_backends == ("zip",) and described["zipped"].hooks == ()


def test_building_a_plugin_host_registers_the_core_data_backends_without_numpy():
    """Every command builds a host (``tuner plugins``, ``config show``): registering ``local`` loads no numpy or decoder."""
    import subprocess
    import sys

    code = (
        "import sys; from tuner.plugins import PluginHost; host = PluginHost.build([]); assert 'local' in host.data_backends;"
        " print(sorted(m for m in ('numpy', 'av', 'PIL', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]"]


class CountsOpens:
    """Mixed in before a backend: the name of each file read through its `open` (not opened by a decoder by name)."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def open(self, path: Path) -> BinaryIO:
        self.opened.append(path.name)
        return super().open(path)  # type: ignore[misc]


class CountedFiles(CountsOpens, LocalFiles):
    """``local`` under another name."""


class CountedZip(CountsOpens, ZipFiles):
    pass


def test_data_preview_decodes_files_on_disk_by_path_and_other_files_through_their_backend(tmp_path):
    from tuner.data.preview import write_preview

    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    _zip_folder(tmp_path / "clips", tmp_path / "clips.zip")
    on_disk, zipped = CountedFiles(), CountedZip()

    class Counted:
        @hookimpl
        def register_data_backends(self, register: Any) -> None:
            register("counted", on_disk)
            register("zip", zipped)

    host = PluginHost.build([], extra={"toy": ToyFamily(), "counted": Counted()})
    config = _zip_config(tmp_path)
    entries = json.loads(Path(config["data"]["data_backend_config"]).read_text())
    disk = {**entries[0], "id": "disk", "type": "counted", "instance_data_dir": str(tmp_path / "clips")}
    _backend_file(tmp_path, [disk, *entries])
    previews = write_preview(host, resolve_config(config, host), tmp_path / "preview")
    assert [(p.dataset, p.windows, len(p.files)) for p in previews] == [("disk", 2, 3), ("zipped", 2, 3)]
    assert on_disk.opened == [], "PyAV reads the clips on disk by their path, as training does"
    assert zipped.opened.count("clip_000.mp4") == 2  # probed, then decoded through the backend


def test_a_backends_file_is_hashed_once_per_cache_build_for_all_its_windows(tmp_path, monkeypatch):
    from tuner.data import frames

    write_synthetic_clips(tmp_path / "loose", count=1, num_frames=9, width=16, height=16)
    _zip_folder(tmp_path / "loose", tmp_path / "clips.zip")
    hashed: list[str] = []
    real = frames.stream_digest
    monkeypatch.setattr(frames, "stream_digest", lambda f: hashed.append("clip") or real(f))
    family = ToyFamily()
    host = PluginHost.build([], extra={"toy": family, "zipped": ZipPlugin()})
    config = _zip_config(tmp_path, max_train_steps=1)
    entries = json.loads(Path(config["data"]["data_backend_config"]).read_text())
    _backend_file(tmp_path, [{**entries[0], "video": {"num_frames": 3, "frame_extraction": "chunk"}}])
    train(resolve_config(config, host), host)
    assert len(list((tmp_path / "cache" / "vae" / "zipped").rglob("*.safetensors"))) == 3  # three windows
    assert hashed == ["clip"], "the member's bytes are hashed for the build once, not once per window"

    # A member replaced between two windows of one build is still caught (its size moved).
    from tuner.data.sizing import Geometry

    geometry = Geometry(frames=3, width=16, height=16, resize=(16, 16), crop=(0, 0), aspect=1.0)
    member = tmp_path / "clips.zip" / "clips" / "clip_000.mp4"
    digest = hashlib.sha256((tmp_path / "loose" / "clip_000.mp4").read_bytes()).hexdigest()
    verified: dict = {}
    open_member = ZipFiles().open
    assert frames.decode_sample(member, geometry, digest, verified, open_member).shape == (3, 16, 16, 3)
    write_synthetic_clips(tmp_path / "loose", count=1, num_frames=6, width=16, height=16)
    _zip_folder(tmp_path / "loose", tmp_path / "clips.zip")
    with pytest.raises(frames.SourceChanged):
        frames.decode_sample(member, geometry, digest, verified, open_member)
    assert len(hashed) == 3


def test_hook_register_data_backends_refuses_a_clash_and_an_object_that_is_no_backend():
    class Clash:
        @hookimpl
        def register_data_backends(self, register: Any) -> None:
            register("local", ZipFiles())

    class NotABackend:
        @hookimpl
        def register_data_backends(self, register: Any) -> None:
            register("tar", object())

    with pytest.raises(PluginError, match="plugins 'core' and 'clash' both register data backend 'local'"):
        PluginHost.build([], extra={"clash": Clash()})
    with pytest.raises(PluginError, match="'tar' with object, which is no tuner.data.storage.DataBackend: subclass it"):
        PluginHost.build([], extra={"tar": NotABackend()})


def test_a_dataset_type_no_plugin_registered_is_refused_with_the_closest_one(tmp_path):
    write_synthetic_clips(tmp_path / "loose", count=1, num_frames=3, width=16, height=16)
    _zip_folder(tmp_path / "loose", tmp_path / "clips.zip")
    host = PluginHost.build([], extra={"toy": ToyFamily(), "zipped": ZipPlugin()})
    config = _zip_config(tmp_path)
    entries = json.loads(Path(config["data"]["data_backend_config"]).read_text())
    _backend_file(tmp_path, [{**entries[0], "type": "zpi"}])
    with pytest.raises(DataError) as err:
        load_layout(resolve_config(config, host))
    assert "dataset 'zipped' (entry 1): type 'zpi' names no data backend (did you mean 'zip'?)" in str(err.value)
    assert "data backends: local, metadata, zip" in str(err.value)
    # Without the plugin, the same file names only the core's own backends.
    bare = PluginHost.build([], extra={"toy": ToyFamily()})
    _backend_file(tmp_path, entries)
    with pytest.raises(DataError, match="type 'zip' names no data backend; data backends: local, metadata "):
        load_layout(resolve_config(config, bare))


def _stills(folder: Path) -> None:
    """Two BMP stills (bytes fixed by their pixels, whatever the library version) with captions."""
    folder.mkdir(parents=True)
    for i in range(2):
        ramp = (np.arange(16 * 24 * 3, dtype=np.uint32).reshape(16, 24, 3) * (i + 3) % 256).astype(np.uint8)
        Image.fromarray(ramp).save(folder / f"still_{i}.bmp")
        (folder / f"still_{i}.txt").write_text(f"a still number {i}\n")


def _entries(root: Path) -> set[str]:
    return {p.name for p in root.rglob("*.safetensors")}


# The entries a cache built before data backends existed holds for `_stills` (the toy family, one step):
# the refactor keeps every key, so no cache is built again.
BEFORE_LATENTS = {"2ec30269bd949085ffd3176efa051d32.safetensors", "fa97e682e0a223b8a9102947ec81c9d5.safetensors"}
BEFORE_TEXTS = {
    "2ba8481e1252bc099512d5e625070082.safetensors",
    "967714369d4fc57be90b64ed5607c449.safetensors",
    "e5471f115f7ba4c8d166f45ef305797e.safetensors",
}


def test_cache_keys_are_those_of_caches_built_before_backends_and_the_same_from_any_backend(tmp_path):
    _stills(tmp_path / "clips")
    family = ToyFamily()
    host = PluginHost.build([], extra={"toy": family, "zipped": ZipPlugin()})
    train(resolve_config(toy_config(tmp_path, max_train_steps=1), host), host)
    assert _entries(tmp_path / "cache" / "vae") == BEFORE_LATENTS
    assert _entries(tmp_path / "cache" / "text") == BEFORE_TEXTS
    assert sorted(json.loads((tmp_path / "cache" / "vae" / "files-data.json").read_text())["files"]) == sorted(
        str(tmp_path / "clips" / f"still_{i}.bmp") for i in range(2)
    )
    # The same stills from a zip: the same latent and text keys (under the dataset's own latent folder).
    _zip_folder(tmp_path / "clips", tmp_path / "clips.zip")
    train(resolve_config(_zip_config(tmp_path, max_train_steps=1, overwrite_output_dir=True), host), host)
    assert _entries(tmp_path / "cache" / "vae" / "zipped") == BEFORE_LATENTS
    assert _entries(tmp_path / "cache" / "text") == BEFORE_TEXTS


def _metadata_dataset(folder: Path, **extra: Any) -> dict[str, Any]:
    write_synthetic_clips(folder / "clips", count=3, num_frames=3, width=16, height=16, captions=False)
    rows = [("clip_000.mp4", "from the table"), ("clip_001", "no extension"), ("gone.mp4", "no such file")]
    rows.append(("../clips.zip", "outside"))
    table = "\n".join(json.dumps({"file_name": f, "caption": c}) for f, c in rows)
    (folder / "clips" / "metadata.jsonl").write_text(table)
    block = {"path": str(folder / "clips" / "metadata.jsonl")}
    return {"id": "listed", "type": "metadata", "dataset_type": "video", "instance_data_dir": str(folder / "clips"),
            "caption_strategy": "parquet", "parquet": block, **extra}


def _scan(folder: Path, entries: list[dict[str, Any]], extra: dict[str, Any] | None = None):
    from tuner.data.prepare import scan_samples

    config = toy_config(folder)
    config["data"] = {"data_backend_config": str(_backend_file(folder, entries)), "cache_dir": str(folder / "cache")}
    host = PluginHost.build([], extra={"toy": ToyFamily(), **(extra or {})})
    return scan_samples(resolve_config(config, host, folder))


def test_the_metadata_backend_reads_the_files_its_table_lists(tmp_path, monkeypatch):
    from tuner.data.captions import MetadataCaptions

    parsed: list[str] = []
    real = MetadataCaptions._rows
    monkeypatch.setattr(MetadataCaptions, "_rows", staticmethod(lambda path: parsed.append(path.name) or real(path)))
    scan = _scan(tmp_path, [_metadata_dataset(tmp_path)])
    assert parsed == ["metadata.jsonl"], "the table that lists the files captions them: read once per scan"
    assert scan.layout.backends["metadata"].description.startswith("the files a metadata file")
    got = {f.path.name: f.caption for f in scan.datasets[0].files}
    assert got == {"clip_000.mp4": "from the table", "clip_001.mp4": "no extension"}  # clip_002 is not listed
    reasons = {s.path.name: s.reason for s in scan.report.skipped}
    assert reasons == {
        "gone.mp4": "listed in metadata.jsonl, but no such media file",
        "clips.zip": "listed in metadata.jsonl, but outside instance_data_dir",
    }
    # The same table captioning a walk of the folder (type local): the unlisted clip is found and skipped.
    local = _scan(tmp_path, [{**_metadata_dataset(tmp_path / "again"), "type": "local"}])
    assert {f.path.name for f in local.datasets[0].files} == {"clip_000.mp4", "clip_001.mp4"}
    assert [(s.path.name, s.reason.split(";")[0]) for s in local.report.skipped] == [
        ("clip_002.mp4", "no caption: no row in metadata.jsonl")
    ]


def test_the_metadata_backend_needs_its_table(tmp_path):
    entry = _metadata_dataset(tmp_path)
    del entry["parquet"]
    with pytest.raises(DataError, match="type 'metadata' lists the files a metadata file names: set caption_strategy"):
        _scan(tmp_path, [{**entry, "caption_strategy": "filename"}])


def test_validation_first_frames_come_from_files_on_disk_only(tmp_path):
    from tuner.errors import ConfigError
    from tuner.validate.first_frames import prompt_images

    write_synthetic_clips(tmp_path / "loose", count=1, num_frames=3, width=16, height=16)
    _zip_folder(tmp_path / "loose", tmp_path / "clips.zip")
    write_synthetic_clips(tmp_path / "held", count=1, num_frames=3, width=16, height=16)
    host = PluginHost.build([], extra={"toy": ToyFamily(), "zipped": ZipPlugin()})
    raw = _zip_config(tmp_path)
    entries = json.loads(Path(raw["data"]["data_backend_config"]).read_text())
    held = {"id": "held", "type": "local", "dataset_type": "video", "instance_data_dir": str(tmp_path / "held")}
    _backend_file(tmp_path, [*entries, held])
    raw["validation"]["validation_using_datasets"] = True
    assert prompt_images(resolve_config({**raw, "eval_dataset_id": "held"}, host)) == {
        "main": [tmp_path / "held" / "clip_000.mp4"]
    }
    with pytest.raises(ConfigError, match="dataset 'zipped' is of type 'zip', whose files are not on this disk"):
        prompt_images(resolve_config({**raw, "eval_dataset_id": "zipped"}, host))


class MemoryFiles(DataBackend):
    """``type: memory``: datasets held in a dict, found by ``instance_data_dir`` as written (a name, not a path)."""

    def __init__(self, stores: dict[str, dict[str, bytes]]) -> None:
        self.stores = stores
        self.roots: dict[Path, dict[str, bytes]] = {}

    def list_files(self, spec: DatasetSpec) -> MediaListing:
        self.roots[spec.root] = self.stores[spec.source]
        return MediaListing(files=sorted(spec.root / n for n in self.stores[spec.source] if not n.endswith(".txt")))

    def open(self, path: Path) -> BinaryIO:
        try:
            return io.BytesIO(self.roots[path.parent][path.name])
        except KeyError:
            raise FileNotFoundError(path) from None


def test_a_backend_finds_its_dataset_by_the_name_as_written(tmp_path):
    clips = write_synthetic_clips(tmp_path / "loose", count=2, num_frames=3, width=16, height=16)
    store = {p.name: p.read_bytes() for c in clips for p in (c, c.with_suffix(".txt"))}

    class MemoryPlugin:
        @hookimpl
        def register_data_backends(self, register: Any) -> None:
            register("memory", MemoryFiles({"someone/clips": store}))

    entry = {"id": "held", "type": "memory", "dataset_type": "video", "instance_data_dir": "someone/clips"}
    scan = _scan(tmp_path, [entry], extra={"memory": MemoryPlugin()})
    (dataset,) = scan.datasets
    assert dataset.spec.source == "someone/clips" and not dataset.spec.root.exists()
    assert [(f.path.name, f.caption) for f in dataset.files] == [
        ("clip_000.mp4", "a red square moving right on a black background"),
        ("clip_001.mp4", "a green circle moving left on a white background"),
    ]
    assert [f.info.frames for f in dataset.files] == [3, 3]

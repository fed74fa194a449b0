"""The bad-input corpus: every way a user (or a damaged disk) can hand tuner wrong input.

Each case starts from a copy of a finished run of the toy family, installed as a plugin
(clips, config, and a real checkpoint in output/), breaks one thing, and runs ``tuner``
through its command-line entry, in this process; the cases of a broken model folder,
which the toy family has none of, start from a finished run on the tiny Wan (model/ too). Every case must end with exit code 2, one ``error:`` line (the
last line, naming the problem), no traceback, every input file byte-for-byte unchanged
and the checkpoint still there. A few cases run as real subprocesses too.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tuner.testing.runs import run_cli, write_run_folder, write_toy_run

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _finish(config: Path, change: Callable[[dict[str, Any]], None] = lambda raw: None) -> Path:
    """Train the run at ``config`` once (it leaves output/checkpoint-1), then set it to resume."""
    folder = config.parent
    result = run_cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    assert (folder / "output" / "checkpoint-1").is_dir()
    # Later runs resume: what the corpus breaks must not cost the checkpoint.
    raw = tomllib.loads(config.read_text())
    raw["train"]["resume_from_checkpoint"] = "latest"
    change(raw)
    _write_toml(config, raw)
    shutil.rmtree(folder / "cache")
    return folder


@pytest.fixture(scope="session")
def _finished_runs() -> dict[str, Path]:
    return {}


@pytest.fixture
def finished_run(_finished_runs, tmp_path_factory, toy_installed) -> Path:
    """A toy run folder (clips/, config.toml) whose first training left output/checkpoint-1 (trained once a session)."""
    if "toy" not in _finished_runs:
        overrides = ["validation.validation_disable=true", "train.output_dir='output'"]
        config = write_toy_run(tmp_path_factory.mktemp("bad-input") / "run", steps=1, overrides=overrides)
        _finished_runs["toy"] = _finish(config)
    return _finished_runs["toy"]


@pytest.fixture(scope="session")
def finished_wan_run(tmp_path_factory, tiny_model_dir) -> Path:
    """The same on the tiny Wan, its model in model/: for the cases of Wan's model folder."""
    folder = tmp_path_factory.mktemp("bad-input-wan") / "run"
    shutil.copytree(tiny_model_dir("wan"), folder / "model")
    config = write_run_folder(
        folder, folder / "model", plugin="wan", steps=1, clips=2, overrides=["validation.validation_disable=true"]
    )
    return _finish(config, lambda raw: raw["wan"].update(pretrained_model_name_or_path="model"))


def _write_toml(path: Path, data: dict[str, Any]) -> None:
    import tomlkit

    path.write_text(tomlkit.dumps(data))


def _config(run: Path) -> dict[str, Any]:
    return tomllib.loads((run / "config.toml").read_text())


def _as_json(run: Path, change: Callable[[dict[str, Any]], None]) -> list[str]:
    """Rewrite the config as config.json after ``change``: JSON can hold what TOML cannot (NUL, surrogates)."""
    raw = _config(run)
    change(raw)
    (run / "config.json").write_text(json.dumps(raw))
    return ["--config", str(run / "config.json")]


def _edit(run: Path, change: Callable[[dict[str, Any]], None]) -> list[str]:
    raw = _config(run)
    change(raw)
    _write_toml(run / "config.toml", raw)
    return []


def _backend(run: Path, entries: Any, *, raw: bytes | None = None) -> list[str]:
    path = run / "backend.json"
    path.write_bytes(raw if raw is not None else json.dumps(entries).encode())

    def use(cfg: dict[str, Any]) -> None:
        cfg["data"].pop("instance_data_dir")
        cfg["data"]["data_backend_config"] = "backend.json"

    return _edit(run, use)


def _dataset(**extra: Any) -> dict[str, Any]:
    return {"id": "clips", "type": "local", "dataset_type": "video", "instance_data_dir": "clips", **extra}


def _only(run: Path, files: dict[str, bytes]) -> list[str]:
    """Replace the clips with ``files`` (each captioned)."""
    shutil.rmtree(run / "clips")
    (run / "clips").mkdir()
    for name, data in files.items():
        (run / "clips" / name).write_bytes(data)
        (run / "clips" / name).with_suffix(".txt").write_text("a caption\n")
    return []


def _clip_bytes(run: Path) -> bytes:
    return (run / "clips" / "clip_000.mp4").read_bytes()


def _cut_clip(run: Path) -> bytes:
    """A clip's first half, as an interrupted copy leaves it (its frames begun, its index missing)."""
    data = _clip_bytes(run)
    return data[: len(data) // 2]


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _scheduler(run: Path, change: Callable[[dict[str, Any]], None]) -> list[str]:
    path = run / "model" / "scheduler" / "scheduler_config.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return []


def _cut(folder: Path) -> list[str]:
    """Cut a component's weights file in half, as an interrupted download leaves it."""
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return []


def _not_writable(run: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    if os.geteuid() == 0:
        target = "/sys/tuner-bad-input"  # sysfs refuses new entries even to root
    else:
        (run / "locked").mkdir()
        (run / "locked").chmod(0o500)
        target = str(run / "locked" / "out")
    return _edit(run, lambda c: c["train"].update(output_dir=target))


def _unreadable_folder(run: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    # Root reads any folder, whatever its mode: the refusal is simulated where the scan lists it.
    (run / "clips" / "private").mkdir()
    for clip in sorted((run / "clips").glob("clip_*")):
        clip.rename(run / "clips" / "private" / clip.name)
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        if os.fspath(path).endswith("private"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return []


def _set(*items: str) -> Callable[[Path], list[str]]:
    def setup(run: Path) -> list[str]:
        return [arg for item in items for arg in ("--set", item)]

    return setup


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[..., list[str]]
    expect: str
    command: str = "train"
    monkeypatch: bool = False  # setup(run, monkeypatch)
    wan: bool = False  # a case of Wan's model folder: starts from the finished run on the tiny Wan


LONG = "x" * 300

CASES = [
    # -- the config file itself --------------------------------------------------------------------
    Case("config not UTF-8", lambda r: (r / "config.toml").write_bytes(b"# caf\xe9\n" + (r / "config.toml").read_bytes()) and [],
         "config.toml is not UTF-8 text (byte 0xe9 on line 1): save it as UTF-8"),
    Case("config UTF-16", lambda r: (r / "config.toml").write_bytes((r / "config.toml").read_text().encode("utf-16")) and [],
         "config.toml is UTF-16 text: save it as UTF-8"),
    Case("config broken TOML", lambda r: (r / "config.toml").write_text("[train\nseed = 1") and [], "invalid TOML"),
    Case("config JSON list", lambda r: (r / "c.json").write_text("[1, 2]") and ["--config", str(r / "c.json")],
         "the top level must be a table/object"),
    Case("config JSON nested too deeply", lambda r: (r / "c.json").write_text("[" * 100_000 + "]" * 100_000) and ["--config", str(r / "c.json")],
         "nested too deeply"),
    Case("config of another format", lambda r: (r / "c.yaml").write_text("a: 1") and ["--config", str(r / "c.yaml")],
         "must end in .toml or .json"),
    Case("config is a folder", lambda r: ["--config", str(r / "clips")], "config file not found"),
    # -- the core's top-level keys ---------------------------------------------------------------
    Case("plugins is a string", lambda r: _edit(r, lambda c: c.update(plugins="toy")), "'plugins' must be a list of plugin names"),
    Case("plugins holds a number", lambda r: _edit(r, lambda c: c.update(plugins=[1])), "'plugins' must be a list of plugin names"),
    Case("model_family is a number", lambda r: _edit(r, lambda c: c.update(model_family=3)), "'model_family' must be the name of a model family"),
    Case("model_family is a list", lambda r: _edit(r, lambda c: c.update(model_family=["toy"])), "'model_family' must be the name of a model family"),
    Case("model_family unknown", lambda r: _edit(r, lambda c: c.update(model_family="tyo")), "model_family 'tyo' is not provided by any active plugin (did you mean 'toy'?)"),
    Case("section is not a table", lambda r: _edit(r, lambda c: c.update(train=3)), "'train' is a section and must be a table"),
    Case("flat and section duplicate", lambda r: _edit(r, lambda c: c.update(learning_rate=1e-3)), "'learning_rate' is set both at the top level and in [train]"),
    Case("unknown key", _set("train.learnin_rate=1e-4"), "unknown key 'train.learnin_rate' (did you mean 'learning_rate'?)"),
    Case("--set without a value", _set("learning_rate"), "--set expects KEY=VALUE"),
    # -- path values no file system takes -----------------------------------------------------------
    Case("output_dir with NUL", lambda r: _as_json(r, lambda c: c["train"].update(output_dir="out\x00put")), "train.output_dir: the value contains a NUL character"),
    Case("output_dir with a lone surrogate", lambda r: _as_json(r, lambda c: c["train"].update(output_dir="out\udc80")), "train.output_dir: the value contains a character that is not valid Unicode"),
    Case("data dir with NUL", lambda r: _as_json(r, lambda c: c["data"].update(instance_data_dir="cl\x00ips")), "data.instance_data_dir: the value contains a NUL character"),
    Case("model path with a lone surrogate", lambda r: _as_json(r, lambda c: c["wan"].update(pretrained_model_name_or_path="/m\udcff")), "wan.pretrained_model_name_or_path: the value contains a character that is not valid Unicode", wan=True),
    Case("output_dir name over 255 bytes", _set(f"output_dir='{LONG}'"), "train.output_dir: the path 'xxx"),
    Case("data dir name over 255 bytes", _set(f"instance_data_dir='{LONG}/clips'"), "data.instance_data_dir: the path 'xxx"),
    Case("model path name over 255 bytes", _set(f"pretrained_model_name_or_path='./{LONG}'"), "wan.pretrained_model_name_or_path: the path './xxx", wan=True),
    # -- numbers -------------------------------------------------------------------------------
    Case("learning_rate inf", _set("learning_rate=inf"), "train.learning_rate: Input should be a finite number (got inf)"),
    Case("flow_schedule_shift nan", _set("flow_schedule_shift=nan"), "train.flow_schedule_shift: Input should be a finite number (got nan)"),
    Case("flow_logit_mean -inf", _set("flow_logit_mean=-inf"), "train.flow_logit_mean: Input should be a finite number"),
    Case("resolution inf", _set("resolution=inf"), "data.resolution: Input should be a finite number (got inf)"),
    Case("learning_rate as text", _set("learning_rate='fast'"), "train.learning_rate: Input should be a valid number"),
    # -- the output folder ---------------------------------------------------------------------
    Case("output_dir is a file", _set("output_dir='clips/clip_000.txt'"), "clip_000.txt is a file, not a folder"),
    Case("output_dir not writable", _not_writable, "train.output_dir: cannot write to", monkeypatch=True),
    # -- the model -----------------------------------------------------------------------------
    Case("model path missing", _set("pretrained_model_name_or_path='/nonexistent/wan'"), "wan.pretrained_model_name_or_path: no such folder /nonexistent/wan (the path looks local, so the Hub is not asked)", wan=True),
    Case("relative model path missing", _set("pretrained_model_name_or_path='./no-model'"), "/run/no-model (the path looks local", wan=True),
    Case("model folder without vae/", lambda r: shutil.rmtree(r / "model" / "vae") or [], "/run/model has no vae/ folder (a complete model folder holds transformer/", wan=True),
    Case("model folder without tokenizer/", lambda r: shutil.rmtree(r / "model" / "tokenizer") or [], "has no tokenizer/ folder", wan=True),
    Case("model folder without transformer/", lambda r: shutil.rmtree(r / "model" / "transformer") or [], "has no transformer/ folder", wan=True),
    Case("transformer file missing", _set("pretrained_transformer_model_name_or_path='weights/wan.safetensors'"), "/run/weights/wan.safetensors", wan=True),
    Case("scheduler without _class_name", lambda r: _scheduler(r, lambda d: d.pop("_class_name")), "scheduler_config.json: it has no '_class_name'", wan=True),
    Case("scheduler naming no class", lambda r: _scheduler(r, lambda d: d.update(_class_name="NoSuchScheduler")), "'_class_name' is 'NoSuchScheduler', not a diffusers scheduler", wan=True),
    Case("transformer weights cut off", lambda r: _cut(r / "model" / "transformer"), "cannot load Wan from", wan=True),
    Case("text encoder weights cut off", lambda r: _cut(r / "model" / "text_encoder"), "cannot load Wan from", wan=True),
    Case("transformer config.json broken", lambda r: (r / "model" / "transformer" / "config.json").write_text("{x") and [],
         "transformer/config.json' is not a valid JSON file", wan=True),
    Case("tokenizer config broken", lambda r: (r / "model" / "tokenizer" / "tokenizer_config.json").write_text("{x") and [],
         "cannot load Wan from", wan=True),
    # -- the backend file ----------------------------------------------------------------------
    Case("backend not UTF-8", lambda r: _backend(r, None, raw=b'[{"id": "caf\xe9"}]'), "is not UTF-8 text (byte 0xe9 on line 1)"),
    Case("backend invalid JSON", lambda r: _backend(r, None, raw=b"[{"), "invalid JSON at line 1"),
    Case("backend is an object", lambda r: _backend(r, {"id": "clips"}), "the top level must be a list of datasets"),
    Case("backend unknown key", lambda r: _backend(r, [_dataset(repeat=2)]), "unknown key 'repeat' (did you mean 'repeats'?)"),
    Case("backend wrong type", lambda r: _backend(r, [_dataset(repeats="many")]), "repeats: Input should be a valid integer"),
    Case("backend NaN resolution", lambda r: _backend(r, None, raw=json.dumps([_dataset(resolution=float("nan"))]).encode()), "resolution: Input should be a finite number"),
    Case("backend NUL in a path", lambda r: _backend(r, [_dataset(instance_data_dir="cl\x00ips")]), "instance_data_dir: the value contains a NUL character"),
    Case("backend path name over 255 bytes", lambda r: _backend(r, [_dataset(cache_dir_vae=LONG)]), "cache_dir_vae: the path 'xxx"),
    Case("backend file is a folder", _set("data_backend_config='clips'", "instance_data_dir=''"), "data_backend_config: no file at"),
    # -- the data ------------------------------------------------------------------------------
    Case("data dir missing", _set("instance_data_dir='no-clips'"), "data.instance_data_dir does not exist or is not a folder"),
    Case("data dir empty", lambda r: _only(r, {}), "no clips or images found in"),
    Case("data dir is a file", _set("instance_data_dir='config.toml'"), "does not exist or is not a folder"),
    Case("only a zero-byte clip", lambda r: _only(r, {"empty.mp4": b""}), "skipped: 1 empty file (0 bytes)"),
    Case("only a garbage clip", lambda r: _only(r, {"garbage.mp4": random.Random(0).randbytes(4096)}), "skipped: 1 unreadable"),  # seeded: random bytes can look like an audio stream
    Case("only a truncated clip", lambda r: _only(r, {"cut.mp4": _cut_clip(r)}), "skipped: 1 unreadable"),  # seeded: random bytes can look like an audio stream
    Case("only a PNG named .mp4", lambda r: _only(r, {"still.mp4": _png_bytes()}), "skipped: 1 not a video"),
    Case("only an unreadable folder", _unreadable_folder, "1 folder(s) could not be read", monkeypatch=True),
    Case("caption metadata without its column", lambda r: (r / "meta.jsonl").write_text('{"name": "clip_000.mp4"}\n') and _backend(
        r, [_dataset(caption_strategy="parquet", parquet={"path": "meta.jsonl"})]), "has no column 'file_name'"),
    # -- files the config points at ------------------------------------------------------------
    Case("prompt library not UTF-8", lambda r: (r / "p.json").write_bytes(b'{"a": "caf\xe9"}') and _set("user_prompt_library='p.json'")(r), "is not UTF-8 text"),
    Case("lycoris config not UTF-8", lambda r: (r / "l.json").write_bytes(b'{"algo": "lo\xefha"}') and _set("lora_type='lycoris'", "lycoris_config='l.json'")(r), "is not UTF-8 text"),
    Case("checkpoint to resume missing", _set("resume_from_checkpoint='output/checkpoint-9'"), "no checkpoint folder at"),
]


def _snapshot(run: Path) -> dict[str, str]:
    """Hash of every file a failed command must leave alone: all of them but the caches it may write."""
    out = {}
    for path in sorted(run.rglob("*")):
        if path.is_file() and "cache" not in path.relative_to(run).parts:
            out[str(path.relative_to(run))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _prepare(finished_run: Path, tmp_path: Path, case: Case, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, symlinks=True)
    monkeypatch.chdir(run)
    extra = case.setup(run, monkeypatch) if case.monkeypatch else case.setup(run)
    args = [case.command] + (["--config", str(run / "config.toml")] if "--config" not in extra else []) + extra
    return run, args


def _finished(request: pytest.FixtureRequest, wan: bool) -> Path:
    return request.getfixturevalue("finished_wan_run" if wan else "finished_run")


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:], f"expected one error line, last:\n{stderr}"
    return errors[0]


def test_the_corpus_is_large_and_named_uniquely():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_ends_in_one_line_and_changes_nothing(request, tmp_path, monkeypatch, case):
    run, args = _prepare(_finished(request, case.wan), tmp_path, case, monkeypatch)
    before = _snapshot(run)
    result = run_cli(args)  # anything but a TunerError propagates here, with its traceback
    monkeypatch.undo()
    assert result.exit_code == 2, result.output + result.stderr
    line = _one_error_line(result.stderr)
    assert case.expect in line, line
    after = _snapshot(run)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    assert not changed, f"changed or removed: {changed}"
    assert (run / "output" / "checkpoint-1" / "pytorch_lora_weights.safetensors").is_file()


def test_broken_clips_are_each_named_with_their_reason(finished_run, tmp_path, monkeypatch):
    case = Case("mixed", lambda r: _only(r, {"empty.mp4": b"", "still.mp4": _png_bytes(), "cut.mp4": _cut_clip(r)}), "")
    run, args = _prepare(finished_run, tmp_path, case, monkeypatch)
    result = run_cli(args)
    assert result.exit_code == 2
    reasons = {line.split(": ", 1)[0].strip(): line.split(": ", 1)[1] for line in result.stderr.splitlines() if ".mp4: " in line}
    assert reasons[str(run / "clips" / "empty.mp4")] == "empty file (0 bytes)"
    assert reasons[str(run / "clips" / "still.mp4")].startswith("not a video: the file holds a PNG image")
    assert reasons[str(run / "clips" / "cut.mp4")].startswith("unreadable")


@pytest.mark.parametrize(
    "setup, expect, wan",
    [
        (lambda r: (r / "config.toml").write_bytes(b"# caf\xe9\n" + (r / "config.toml").read_bytes()) and [], "is not UTF-8 text", False),
        (_set("pretrained_model_name_or_path='./no-model'"), "/no-model (the path looks local", True),
        (_set("output_dir='config.toml'"), "is a file, not a folder", False),
    ],
    ids=["not UTF-8", "missing model", "output_dir a file"],
)
def test_bad_input_in_a_real_process(request, tmp_path, monkeypatch, setup, expect, wan):
    run, args = _prepare(_finished(request, wan), tmp_path, Case("sub", setup, expect), monkeypatch)
    before = _snapshot(run)
    proc = subprocess.run(
        [sys.executable, "-m", "tuner.cli", *args], capture_output=True, text=True, cwd=run, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    assert expect in _one_error_line(proc.stderr)
    assert _snapshot(run) == before


@pytest.mark.parametrize("kind", ["config", "toml", "backend"])
def test_json_with_a_byte_order_mark_is_read_like_any_json(finished_run, tmp_path, monkeypatch, kind):
    run, args = _prepare(finished_run, tmp_path, Case("bom", lambda r: [], ""), monkeypatch)
    if kind == "config":
        (run / "config.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(_config(run)).encode())
        args = ["config", "show", "--config", str(run / "config.json")]
    elif kind == "toml":
        (run / "config.toml").write_bytes(b"\xef\xbb\xbf" + (run / "config.toml").read_bytes())
        args = ["config", "show", "--config", str(run / "config.toml")]
    else:
        _backend(run, None, raw=b"\xef\xbb\xbf" + json.dumps([_dataset()]).encode())
        args = ["config", "show", "--config", str(run / "config.toml")]
        from tuner.data.backends import parse_backend_file

        assert [e.id for _, e in parse_backend_file(run / "backend.json", ["local"])] == ["clips"]
    result = run_cli(args)
    assert result.exit_code == 0, result.stderr
    assert "learning_rate" in result.output

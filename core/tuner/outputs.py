"""The output folder belongs to one run at a time, and to tuner only where tuner wrote.

- **One run per folder.** A run holds an exclusive ``flock`` on ``output_dir/.tuner-lock`` for
  its lifetime (the main process of a multi-process run). The kernel drops the lock when the
  process ends, however it ends, so a crash never leaves the folder held. A second run stops
  in one line naming the first: its process id, host and start time, read from the lock file.
- **Never over a file tuner did not write.** ``output_dir/.tuner-outputs.json`` lists the
  top-level names tuner created there (the model card, the adapters, the log, ``validation``).
  A file at one of those names that the record does not list is the user's (their project's
  ``README.md`` with ``output_dir = "."``): the run refuses at its start, and every write at
  such a name checks again (`claim`).
- **Outputs apart from inputs.** ``output_dir`` and the cache folders may not be, or lie
  inside, a dataset folder or a local model folder: the next scan would train on the run's own
  validation media, and the model card would replace the model's ``README.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import ConfigError, printable

if TYPE_CHECKING:
    from tuner.config import RunConfig

__all__ = [
    "LOCK_NAME",
    "RECORD_NAME",
    "LOG_NAME",
    "CARD_NAME",
    "OutputLock",
    "hold_output_dir",
    "claim",
    "check_own_names",
    "check_apart",
]

LOCK_NAME = ".tuner-lock"
RECORD_NAME = ".tuner-outputs.json"
LOG_NAME = "train_log.jsonl"  # the event log (tuner.report.jsonlog)
CARD_NAME = "README.md"  # the model card (tuner.report.modelcard)
# Top-level names every run writes into output_dir; plugins' own names are checked when written (`claim`).
CORE_NAMES = (CARD_NAME, LOG_NAME, "validation")
_ADAPTER_GLOB = "pytorch_lora_weights*.safetensors"


@dataclass
class OutputLock:
    """The open lock file; the lock lasts while it is open (and dies with the process)."""

    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)  # a folder no run holds says nothing about one (and a failed run changes nothing)
            os.close(self.fd)
            self.fd = -1


def hold_output_dir(output_dir: Path) -> OutputLock | None:
    """Lock ``output_dir`` for this run; a `ConfigError` naming the run that holds it. ``None`` without ``fcntl``."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; runs are not guarded there
        return None
    path = output_dir / LOCK_NAME
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise ConfigError(
            f"train.output_dir: cannot open the lock file {printable(str(path))} ({exc.strerror or exc}): remove it"
            " if it is a link or a folder, or pick another output_dir"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _holder(fd)
        os.close(fd)
        raise ConfigError(
            f"train.output_dir {output_dir} is in use by another tuner run ({holder}): wait for it to end, stop it,"
            " or pick another output_dir"
        ) from None
    facts = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(facts).encode(), 0)
    return OutputLock(fd)


def _holder(fd: int) -> str:
    try:
        facts = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"process {int(facts['pid'])} on {printable(str(facts['host']))}, started {printable(str(facts['started']))}"
    except (OSError, ValueError, KeyError, TypeError):
        return "it has not said which yet"  # the other run holds the lock but has not written its facts


def _record(output_dir: Path) -> set[str]:
    try:
        names = json.loads((output_dir / RECORD_NAME).read_text(encoding="utf-8"))["written"]
        return {n for n in names if isinstance(n, str)}
    except FileNotFoundError:
        return _written_before_records(output_dir)
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _written_before_records(output_dir: Path) -> set[str]:
    """A run folder of a tuner version that kept no record: its own log says so, and the names it wrote are its.

    (That version wrote its model card over any README.md already, so taking them as tuner's loses nothing.)
    """
    try:
        with (output_dir / LOG_NAME).open("rb") as log:
            first = json.loads(log.readline(65536))
    except (OSError, ValueError):
        return set()
    if not isinstance(first, dict) or first.get("event") != "start":
        return set()
    names = {*CORE_NAMES, *(p.name for p in output_dir.glob(_ADAPTER_GLOB))}
    _write_record(output_dir, names)  # kept from now on: overwrite_output_dir deletes the log that vouched
    return names


def _write_record(output_dir: Path, names: set[str]) -> None:
    from tuner.durable import replacing

    output_dir.mkdir(parents=True, exist_ok=True)
    with replacing(output_dir / RECORD_NAME) as tmp:
        tmp.write_text(json.dumps({"written": sorted(names)}, indent=1), encoding="utf-8")


def _refusal(output_dir: Path, name: str) -> ConfigError:
    return ConfigError(
        f"train.output_dir {output_dir} holds {printable(name)}, which tuner did not write: tuner never replaces a"
        " file it did not write; move it, or pick another (new or empty) output_dir"
    )


def check_own_names(output_dir: Path, names: Iterable[str] = ()) -> None:
    """Refuse, before any work, an ``output_dir`` holding the user's file at a name a run writes."""
    if not output_dir.is_dir():
        return
    written = _record(output_dir)
    wanted = {*CORE_NAMES, *names, *(p.name for p in output_dir.glob(_ADAPTER_GLOB))}
    for name in sorted(wanted):
        if name not in written and os.path.lexists(output_dir / name):
            raise _refusal(output_dir, name)


def claim(path: Path) -> None:
    """Before writing ``path`` (a top-level name in the output folder): refuse if it is the user's, else record it."""
    output_dir, name = path.parent, path.name
    written = _record(output_dir)
    if name in written:
        return
    if os.path.lexists(path):
        raise _refusal(output_dir, name)
    _write_record(output_dir, written | {name})


def _inputs(config: RunConfig, layout: Any) -> list[tuple[str, Path]]:
    """(what, folder) for every dataset folder and every local model folder the config names."""
    found = [(f"the dataset '{spec.id}' ({spec.where})", Path(spec.root)) for spec in layout.datasets]
    core = {"train", "data", "validation"}
    for section_name, section in config.sections.items():
        if section_name in core:
            continue
        # The Hugging Face convention: an option that names a model, as a hub id or a local folder.
        for option, value in section.model_dump().items():
            if option.endswith("_name_or_path") and isinstance(value, str) and value:
                local = Path(config.resolve_path(value))
                if _resolved(local) is not None and local.is_dir():
                    found.append((f"the model folder {section_name}.{option}", local))
    return found


def _resolved(path: Path) -> Path | None:
    """``path`` made absolute, links followed; ``None`` for a name no file system takes (said elsewhere, by option)."""
    try:
        path.is_dir()
        return path.resolve()
    except (OSError, ValueError):
        return None


def _outputs(config: RunConfig, layout: Any) -> list[tuple[str, Path]]:
    found = [("train.output_dir", Path(config.train.output_dir)), ("data.cache_dir", config.paths.resolve(config.data.cache_dir))]
    caches = {Path(layout.default_text_cache)}
    for spec in layout.datasets:
        caches |= {Path(spec.vae_cache), Path(spec.text_cache)}
    found += [("the cache folder", path) for path in sorted(caches)]  # a backend file's own cache folders
    return found


def check_apart(config: RunConfig, layout: Any) -> None:
    """Refuse an output or cache folder that is, or lies inside, a dataset folder or a local model folder."""
    for what_in, folder in _inputs(config, layout):
        inside = _resolved(folder)
        for what_out, out in _outputs(config, layout):
            where = _resolved(out)
            if inside is None or where is None or (where.exists() and not where.is_dir()):
                continue  # a path that cannot be a folder: `tuner.paths.check_output_dir` says so, naming the option
            if where == inside or where.is_relative_to(inside):
                effect = (
                    "the next scan would train on this run's own files"
                    if "dataset" in what_in
                    else "its files would be mixed with the model's (the model card would replace its README.md)"
                )
                raise ConfigError(
                    f"{what_out} {printable(str(out))} lies inside {what_in}, {printable(str(folder))}: {effect}; point"
                    f" {'output_dir' if what_out == 'train.output_dir' else 'cache_dir'} at a folder outside it"
                )

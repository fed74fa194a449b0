"""Helpers of the `tuner serve` tests: a real server on a free port, run logs written record by record."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def serving(root: Path, token: str | None = None, loopback_only: bool = True) -> Iterator[tuple[str, Any]]:
    """Serve ``root`` from a thread with uvicorn, as `tuner serve` does; yields ``("127.0.0.1:PORT", app)``."""
    import uvicorn

    from tuner.serve.app import build_app

    app = build_app(root, token=token, loopback_only=loopback_only)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        server.should_exit = True
        thread.join(10)


def request(
    address: str, path: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request: the path goes out exactly as given (no client-side ``..`` clean-up)."""
    host, port = address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def get_json(address: str, path: str) -> Any:
    status, _, body = request(address, path)
    assert status == 200, (status, body[:300])
    return json.loads(body)


def write_log(folder: Path, records: list[dict[str, Any]], tail: str = "") -> Path:
    """A ``train_log.jsonl`` of ``records`` (and ``tail``: e.g. half a line), as the trainer writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train_log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def steps(n: int, start: int = 1, loss: Callable[[int], float] = lambda s: 1.0 / s) -> list[dict[str, Any]]:
    return [
        {"time": 1000.0 + s, "event": "step", "step": s, "loss": loss(s), "lr": 1e-4, "step_time": 0.5,
         "sigma_mean": (s % 10) / 10, "grad_norm": 0.1}
        for s in range(start, start + n)
    ]


def start(total: int, start_step: int = 0) -> dict[str, Any]:
    return {"time": 1000.0, "event": "start", "start_step": start_step, "max_train_steps": total}

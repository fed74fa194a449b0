"""Delivering HTTP POSTs in the background, so a slow endpoint never holds training up.

Each target gets one worker thread and a bounded queue. Posting is a
non-blocking ``put``: when the queue is full the event is dropped and counted.
The worker sends in order, with a timeout per request and a few retries with
backoff; at the end of the run `Delivery.stop` / `join` wait a bounded time for what
is queued and abandons the rest. Messages never contain the URL or the token.

Redirects are followed (urllib does), but the private headers (the token) go only
to the origin (scheme, host, port) they were given for: urllib would re-send them
to whatever host a redirect names.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.report.secrets import Scrubber

__all__ = ["Post", "Delivery", "multipart", "same_origin"]

log = logging.getLogger("tuner.report.webhooks")

_STOP = object()


@dataclass
class Post:
    """One request: a JSON body, or multipart form fields plus files."""

    json_body: dict[str, Any] | None = None
    fields: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, Path, str]] = field(default_factory=list)  # (form name, path, content type)


def same_origin(a: str, b: str) -> bool:
    """Both URLs name the same scheme, host and port (the default port spelled or not)."""
    x, y = urllib.parse.urlsplit(a), urllib.parse.urlsplit(b)
    default = {"http": 80, "https": 443}
    try:
        ports = (x.port or default.get(x.scheme), y.port or default.get(y.scheme))
    except ValueError:  # an invalid port in the redirect: not the same origin
        return False
    return (x.scheme.lower(), (x.hostname or "").lower(), ports[0]) == (y.scheme.lower(), (y.hostname or "").lower(), ports[1])


class _PrivateHeadersStayHome(urllib.request.HTTPRedirectHandler):
    """Follows redirects, dropping the given headers when the redirect leaves the origin."""

    def __init__(self, private: set[str]) -> None:
        self.private = {name.lower() for name in private}

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and not same_origin(req.full_url, new.full_url):
            for name in [k for k in new.headers if k.lower() in self.private]:
                new.remove_header(name)
        return new


def multipart(fields: dict[str, str], files: list[tuple[str, Path, str]]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body and its content type."""
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value.encode() + b"\r\n")
    for name, path, ctype in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n"
        )
        parts.append(head.encode() + path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Delivery:
    """A background sender for one endpoint.

    :param url: where to POST (kept private: never logged).
    :param label: how log lines name this endpoint (e.g. ``webhook 1 (discord)``).
    :param headers: extra headers (an ``Authorization`` token, never logged).
    :param timeout: seconds per request attempt.
    :param retries: further attempts after a failed one.
    :param max_queue: events waiting at most; beyond that new ones are dropped.
    """

    def __init__(
        self,
        url: str,
        label: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
        retries: int = 2,
        max_queue: int = 200,
    ) -> None:
        self._url = url
        self._headers = dict(headers or {})
        self._scrub = Scrubber([url], self._headers.values())
        self._opener = urllib.request.build_opener(_PrivateHeadersStayHome(set(self._headers)))
        self.label = label
        self.timeout = timeout
        self.retries = retries
        self.posted = 0
        self.sent = 0
        self.dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._give_up_at: float | None = None
        self._thread = threading.Thread(target=self._work, name=f"tuner-{label}", daemon=True)
        self._thread.start()

    # -- the training thread's side: never blocks ---------------------------

    def post(self, item: Post) -> None:
        try:
            self._queue.put_nowait(item)
            self.posted += 1
        except queue.Full:
            self.dropped += 1

    def stop(self, wait: float) -> None:
        """Accept nothing more; the worker gets ``wait`` seconds for what is queued, then abandons it."""
        self._give_up_at = time.monotonic() + wait
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:
            pass  # the worker sees the deadline instead

    def join(self) -> None:
        """Wait for the worker, at most until the deadline `stop` set; report what was lost."""
        if self._give_up_at is not None:
            self._thread.join(timeout=max(0.0, self._give_up_at - time.monotonic()) + 0.1)
        lost = self.posted - self.sent + self.dropped
        if lost:
            log.warning("%s: %d event(s) not delivered", self.label, lost)

    # -- the worker ---------------------------------------------------------

    def _late(self) -> bool:
        return self._give_up_at is not None and time.monotonic() >= self._give_up_at

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP or self._late():
                return
            self._deliver(item)

    def _deliver(self, item: Post) -> None:
        for attempt in range(self.retries + 1):
            try:
                self._send(item)
                self.sent += 1
                return
            except Exception as exc:  # any failure: retry, then give up on this event only
                reason = self._scrub(f"{type(exc).__name__}: {exc}")
            if attempt < self.retries:
                pause = min(0.5 * 2**attempt, 5.0)
                if self._give_up_at is not None:
                    pause = min(pause, max(0.0, self._give_up_at - time.monotonic()))
                time.sleep(pause)
                if self._late():
                    break
        log.warning("%s: an event could not be delivered (%s)", self.label, reason)

    def _send(self, item: Post) -> None:
        if item.json_body is not None:
            data, ctype = json.dumps(item.json_body, default=str).encode(), "application/json"
        else:
            data, ctype = multipart(item.fields, item.files)
        timeout = self.timeout
        if self._give_up_at is not None:
            timeout = max(0.05, min(timeout, self._give_up_at - time.monotonic()))
        request = urllib.request.Request(
            self._url, data=data, method="POST", headers={"Content-Type": ctype, "User-Agent": "tuner", **self._headers}
        )
        with self._opener.open(request, timeout=timeout) as response:
            response.read()

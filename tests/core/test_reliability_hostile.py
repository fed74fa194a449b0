"""Reliability, round two: hostile or damaged inputs end in one line, never a traceback, a hang or a leak.

Each test meets the real failure: a real redirecting server, real symlinks and FIFOs, real processes.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tuner.report.delivery import Delivery, Post


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

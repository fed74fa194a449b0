"""Who may talk to the server: the token, the Host header, and where a POST comes from.

On 127.0.0.1 (the default) there is no token, but a web page from elsewhere
must still not drive the server through the user's browser: requests must name
a loopback Host (a DNS-rebinding page names its own), and a POST must carry
JSON from the server's own origin (a cross-site form cannot; a cross-site
``fetch`` with JSON needs a CORS preflight this server never answers).
With ``--host`` and ``--token`` every request must carry the token (query
``?token=``, once: it is then kept in a cookie, or an ``Authorization: Bearer``
header); one without it gets an empty 403.
"""

from __future__ import annotations

import hmac
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

__all__ = ["Guard", "COOKIE"]

COOKIE = "tuner_serve_token"
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")

Scope = dict[str, Any]


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


class Guard:
    """ASGI middleware in front of the app; see the module docstring."""

    def __init__(self, app: Any, token: str | None, loopback_only: bool) -> None:
        self.app, self.token, self.loopback_only = app, token, loopback_only

    def _token_of(self, scope: Scope, headers: dict[str, str]) -> tuple[str | None, bool]:
        """The token the request carries, and whether it came in the query (so a cookie should keep it)."""
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
        if query:
            return query[0], True
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip(), False
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed cookie header is no token
            return None, False
        return (cookie[COOKIE].value if COOKIE in cookie else None), False

    def _allowed(self, scope: Scope, headers: dict[str, str]) -> tuple[bool, bool]:
        host = headers.get("host", "")
        if self.loopback_only and host.rsplit(":", 1)[0] not in _LOOPBACK and host not in _LOOPBACK:
            return False, False
        if scope["method"] not in ("GET", "HEAD"):
            origin = headers.get("origin")
            if origin is not None and origin != f"http://{host}":
                return False, False
            if not headers.get("content-type", "").startswith("application/json"):
                return False, False
        if self.token is None:
            return True, False
        given, from_query = self._token_of(scope, headers)
        ok = given is not None and hmac.compare_digest(given.encode(), self.token.encode())
        return ok, ok and from_query

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        allowed, keep = self._allowed(scope, _headers(scope))
        if not allowed:
            await send({"type": "http.response.start", "status": 403, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if not keep:
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1")
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)

"""Keeping webhook URLs and tokens out of every message, log line, tracker and model card.

A webhook URL is a password (Discord's carries its token in the path), and it is
not only printed whole: urllib's errors quote the path alone, the host alone, or
``repr`` it with escapes; a log may percent-encode it. `Scrubber` knows each of
those renderings of each secret and replaces them with ``***``.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["MASK", "Scrubber", "run_scrubber"]

MASK = "***"
_MIN_LEN = 4  # shorter fragments ("/", "api") say nothing secret and would mangle ordinary words
_HF_TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def _forms(text: str) -> set[str]:
    """``text`` as messages show it: raw, percent-encoded or decoded, escaped by ``repr`` or JSON (nested)."""
    quote, unquote = urllib.parse.quote, urllib.parse.unquote
    forms = {text, quote(text, safe="/:?=&@"), quote(text, safe=""), unquote(text)}
    for _ in range(3):  # an error quoting a repr, its own repr, a JSON log line holding that
        forms |= {escaped for f in forms for escaped in (repr(f)[1:-1], json.dumps(f)[1:-1])}
    return forms


def _url_parts(url: str) -> set[str]:
    """The URL and every piece of it a message may quote on its own."""
    rest = url.split("://", 1)[-1]
    netloc, slash, tail = rest.partition("/")
    # From the raw text too: urlsplit drops tabs and newlines, which urllib's errors still quote.
    parts = {url, rest, netloc, slash + tail, (slash + tail).partition("?")[0], *tail.replace("?", "/").split("/")}
    try:
        split = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. a malformed IPv6 host: keep the pieces a plain split finds
        return parts | set(rest.replace("?", "/").replace("&", "/").replace("=", "/").split("/"))
    tail = split.path + (f"?{split.query}" if split.query else "")
    parts |= {split.netloc, split.path, split.query, split.fragment, tail, split.netloc + tail}
    parts |= {split.username or "", split.password or "", split.hostname or ""}
    parts |= set(split.netloc.rsplit("@", 1)[-1].rsplit(":", 1))  # "nonnumeric port: '...'" quotes the port
    parts |= set(split.path.split("/"))
    for key, value in urllib.parse.parse_qsl(split.query, keep_blank_values=True):
        parts |= {value, f"{key}={value}"}
    return parts


class Scrubber:
    """Replaces every known rendering of the given URLs and tokens with ``***``."""

    def __init__(self, urls: Iterable[str | None] = (), tokens: Iterable[str | None] = ()) -> None:
        fragments: set[str] = set()
        for url in filter(None, urls):
            for part in _url_parts(url):
                fragments |= _forms(part)
        for token in filter(None, tokens):
            fragments |= _forms(token)
            fragments |= {word for word in token.split() if len(word) >= _MIN_LEN}  # "Bearer abc..." -> "abc..."
        # Longest first: a whole URL goes before its pieces, so no half of it is left showing.
        self.fragments = sorted((f for f in fragments if len(f.strip()) >= _MIN_LEN), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for fragment in self.fragments:
            if fragment in text:
                text = text.replace(fragment, MASK)
        return text

    def __add__(self, other: Scrubber) -> Scrubber:
        both = Scrubber()
        both.fragments = sorted(set(self.fragments) | set(other.fragments), key=len, reverse=True)
        return both

    def value(self, value: Any) -> Any:
        """``value`` with strings scrubbed (other types as they are)."""
        return self(value) if isinstance(value, str) else value


def run_scrubber(config: Any) -> Scrubber:
    """Every secret a run knows: its webhook URLs and tokens, and the Hugging Face token in the environment."""
    urls: list[str] = []
    tokens: list[str | None] = [os.environ.get(name) for name in _HF_TOKEN_VARS]
    sections = getattr(config, "sections", {})
    path = sections["webhooks"].webhook_config if "webhooks" in sections else None
    if path is not None:
        from tuner.report.webhooks import read_webhook_config

        try:
            for target in read_webhook_config(Path(path)):
                urls.append(target.webhook_url)
                tokens.append(target.auth_token)
        except ValueError:
            pass  # an unreadable file is reported by the webhooks plugin; it has no secret to hide here
    return Scrubber(urls, tokens)

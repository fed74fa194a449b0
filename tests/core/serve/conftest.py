"""The `served` fixture: `tuner serve` servers that stop at the test's end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import serving


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[..., tuple[str, Any]]]:
    """``served(root, token=None)`` -> address; every server stops at the test's end."""
    stack: list[Any] = []

    def serve(root: Path, token: str | None = None, loopback_only: bool = True) -> tuple[str, Any]:
        cm = serving(root, token=token, loopback_only=loopback_only)
        stack.append(cm)
        return cm.__enter__()

    yield serve
    for cm in reversed(stack):
        cm.__exit__(None, None, None)

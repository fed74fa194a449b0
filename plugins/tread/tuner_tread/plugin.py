"""The TREAD plugin, as tuner hooks (the ``tuner.plugins`` entry point ``tread``).

It reaches a model family only through `route_tokens`: the family exposes its
block stack and carries the plan out; TREAD only decides which tokens skip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tuner import hookimpl
from tuner.progress import say

from tuner_tread.settings import TreadSection

if TYPE_CHECKING:
    from tuner.config import RunConfig
    from tuner.types.bundle import ModelBundle
    from tuner.types.routes import TokenRouter

    from tuner_tread.settings import TreadRoute


@hookimpl
def register_config_sections(register: Any) -> None:
    register("tread", TreadSection)


@hookimpl
def route_tokens(bundle: ModelBundle, config: RunConfig) -> TokenRouter | None:
    from tuner_tread.router import TreadRouter

    tread = config.section("tread").tread_config
    if tread is None or not tread.routes:
        return None
    # The core checks the spans against bundle.num_blocks (and the family's support) right after this.
    router = TreadRouter(tuple(tread.routes))
    line = describe_routes(tread.routes, bundle.num_blocks)
    if line:
        say(line)
    return router


def describe_routes(routes: Sequence[TreadRoute], num_blocks: int) -> str | None:
    """One line: the blocks each route skips, and the expected share of the latent tokens' block passes
    routed around (text tokens are never routed); ``None`` when the routes do not fit the model (the core
    says why, naming the route)."""
    from tuner.errors import ConfigError

    from tuner_tread.router import resolve_routes

    try:
        resolved = resolve_routes(routes, num_blocks)
    except ConfigError:
        return None
    parts = []
    skipped = 0.0
    for start, end, ratio in resolved:
        span = end - start + 1
        skipped += ratio * span
        parts.append(f"{ratio:.0%} of latent tokens skip blocks {start}-{end} ({span} of {num_blocks})")
    share = skipped / num_blocks
    return f"TREAD: {'; '.join(parts)}; expected share routed: {share:.1%} of the latent tokens' block passes"

"""The TREAD plugin, as tuner hooks (the ``tuner.plugins`` entry point ``tread``).

It reaches a model family only through `route_tokens`: the family exposes its
block stack and carries the plan out; TREAD only decides which tokens skip.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuner.hookspecs import hookimpl

from tuner_tread.settings import TreadSection

if TYPE_CHECKING:
    from tuner.config import RunConfig
    from tuner.types import ModelBundle, TokenRouter


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
    return TreadRouter(tuple(tread.routes))

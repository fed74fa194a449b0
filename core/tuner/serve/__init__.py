"""``tuner serve``: a local web server to watch, compare and start runs (docs/serve.md).

It only reads run folders (``train_log.jsonl``, ``validation/``, checkpoints),
so it shows runs of earlier versions and runs copied from another machine.
"""

from __future__ import annotations

__all__: list[str] = []

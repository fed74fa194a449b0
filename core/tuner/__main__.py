"""``python -m tuner``: the ``tuner`` command, for launchers that start a module (``accelerate launch -m tuner``)."""

from __future__ import annotations

from tuner.cli import main

if __name__ == "__main__":
    main()

"""Setting up a run: the ``tuner configure`` wizard and ``tuner config import``."""

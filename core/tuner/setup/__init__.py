"""Setting up a run: the wizard and the importer behind ``tuner configure`` and ``tuner config import``."""

"""LTX-Video for tuner: the ``ltx`` model family (entry point ``tuner_ltx.plugin``)."""

__version__ = "0.1.0"

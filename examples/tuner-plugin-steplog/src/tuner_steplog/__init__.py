"""tuner-steplog: an example third-party tuner plugin.

The plugin itself is `tuner_steplog.plugin`; this package imports nothing so
that finding the entry point stays cheap.
"""

"""Reporting a run as it goes: the built-in lifecycle plugins (event log, console, trackers, webhooks, hub, model card)."""

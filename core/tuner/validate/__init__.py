"""Validation rounds and the media they write."""

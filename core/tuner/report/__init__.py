"""Progress display and reporting."""

"""Sinks: where committed batches go — the store first, then after-commit observers."""

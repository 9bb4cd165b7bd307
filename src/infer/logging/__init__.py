"""Metric sinks: console (+ metrics.json), W&B."""

"""Metric sinks: console (+ metrics.json), W&B, the sweep results table, the Pareto callback."""

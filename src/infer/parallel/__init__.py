"""Parallelism: ParallelContext and strategies."""

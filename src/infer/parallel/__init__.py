"""Parallelism: tensor and pipeline parallel state, sharding, runner, communicators."""

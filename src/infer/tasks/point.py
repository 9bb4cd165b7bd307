"""``task=point`` (experiment=pareto): bench then eval on one engine, one metrics dict."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from infer.tasks import bench
from infer.tasks import eval as eval_task


def run(engine: Any, cfg: DictConfig) -> dict[str, Any]:
    """Throughput first (before the eval's reference engine is built), then accuracy."""
    m = bench.run(engine, cfg)
    m.update(eval_task.run(engine, cfg))
    m["task"] = "point"
    return m

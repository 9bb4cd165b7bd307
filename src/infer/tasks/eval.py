"""``task=eval``: accuracy of the configured engine (see infer.eval.evaluate)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from infer.eval.evaluate import evaluate


def run(engine: Any, cfg: DictConfig) -> dict[str, Any]:
    """Perplexity on ``cfg.eval.data``, divergence from the reference, greedy agreement."""
    if cfg.eval.get("name") == "none" or "window" not in cfg.eval:
        raise ValueError("task=eval needs evaluation settings: pick eval=default or eval=quick")
    return {"task": "eval", **evaluate(engine, cfg)}

"""A task for the launcher tests: fixed token-id prompts, greedy, the generated ids in metrics
(``task.fn=token_task.run`` with tests/parallel on PYTHONPATH)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from infer.sampling_params import SamplingParams

PROMPTS = [list(range(5 + i, 25 + 3 * i)) for i in range(3)]  # token ids, any tokenizer


def run(engine: Any, cfg: DictConfig) -> dict[str, Any]:
    """Generate ``task.max_tokens`` greedy tokens per prompt; metrics["tokens"] holds them
    as one space-separated string per prompt (scalars only reach metrics.json)."""
    params = SamplingParams(temperature=0.0, max_tokens=int(cfg.task.max_tokens))
    rids = [engine.add_request(None, p, params) for p in PROMPTS]
    done: dict[str, Any] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    toks = [" ".join(map(str, done[r].outputs[0].token_ids)) for r in rids]
    return {"task": "tokens", "tokens": " | ".join(toks)}

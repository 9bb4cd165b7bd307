"""``task=lm_eval``: lm-evaluation-harness tasks on the configured engine.

Metrics come back flat, ``<task>/<metric>`` (``/<filter>`` when not "none"), so a sweep's
results table and W&B summary get task-accuracy columns beside throughput and KL.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig

from infer.engine import Engine


def _names(v: Any) -> list[str]:
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return [str(s) for s in v]


def flatten_results(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``{"arc_easy": {"acc,none": 0.5, ...}}`` -> ``{"arc_easy/acc": 0.5, ...}`` (numbers only)."""
    flat: dict[str, float] = {}
    for task, vals in results.items():
        for key, v in vals.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            name, _, filt = key.partition(",")
            flat[f"{task}/{name}" + (f"/{filt}" if filt and filt != "none" else "")] = float(v)
    return flat


def run(engine: Engine, cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``engine`` on ``lm_eval.tasks``; returns flat metrics (+ samples if asked)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from infer.lm_eval_backend.model import InferLM

    c = cfg.lm_eval
    tasks = _names(c.tasks)
    if not tasks:
        raise ValueError("lm_eval.tasks is empty; name lm-eval tasks, e.g. lm_eval.tasks=[arc_easy]")
    include = c.include_path
    if isinstance(include, ListConfig):
        include = [str(p) for p in include]
    lm = InferLM(engine=engine, max_length=c.max_length, max_gen_toks=int(c.max_gen_toks))
    seed = int(c.seed)
    res = simple_evaluate(
        model=lm, tasks=tasks, num_fewshot=c.num_fewshot, limit=c.limit,
        task_manager=TaskManager(include_path=include), bootstrap_iters=int(c.bootstrap_iters),
        log_samples=bool(c.log_samples), apply_chat_template=bool(c.apply_chat_template),
        fewshot_as_multiturn=bool(c.fewshot_as_multiturn), system_instruction=c.system_instruction,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
    )
    metrics: dict[str, Any] = {"task": "lm_eval", "lm_eval_tasks": ",".join(tasks)}
    metrics.update(flatten_results(res["results"]))
    if c.log_samples:
        # "_name" list payloads go to <run dir>/name.jsonl (logging sinks)
        metrics["_lm_eval_samples"] = [{"task": t, **x} for t, xs in res.get("samples", {}).items() for x in xs]
    return metrics

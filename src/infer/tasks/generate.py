"""``task=generate``: complete the workload's prompts and report basic throughput."""

from __future__ import annotations

import time
from typing import Any

from omegaconf import DictConfig

from infer.engine import Engine
from infer.eval.comm_metrics import comm_delta, comm_snapshot
from infer.sampling_params import SamplingParams


def chat_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a one-message chat with the generation prompt appended."""
    out = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
    )
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _workload_prompts(engine: Engine, cfg: DictConfig, use_chat: bool) -> list[tuple[str, list[int]]]:
    """(text, token ids) of ``workload.prompts``; workloads without fixed prompts (synthetic,
    sharegpt, ...) contribute their generated requests' prompts."""
    tok = engine.tokenizer
    if "prompts" in cfg.workload:
        return [(p, chat_ids(tok, p) if use_chat else tok.encode(p, add_special_tokens=False))
                for p in cfg.workload.prompts]
    from infer.eval.build_workload import build_workload
    from infer.eval.evaluate import cache_dir_of

    reqs = build_workload(cfg.workload, tok, cache_dir_of(cfg))
    return [(r.prompt or tok.decode(r.prompt_token_ids), r.prompt_token_ids) for r in reqs]


def _fed(engine: Engine) -> float:
    """Tokens the model has run so far (prompt tokens computed + output tokens)."""
    return float(engine.stats.computed_prompt_tokens + engine.stats.output_tokens)


def run(engine: Engine, cfg: DictConfig) -> dict[str, Any]:
    """Generate for every prompt of ``cfg.workload`` (its ``prompts``, or its generator's
    requests); print them; return metrics."""
    tok = engine.tokenizer
    t = cfg.task
    params = SamplingParams(
        temperature=float(t.temperature), top_p=float(t.top_p), max_tokens=int(t.max_tokens),
        seed=t.seed,
    )
    use_chat = bool(t.chat) and getattr(tok, "chat_template", None)
    start = time.perf_counter()
    comm0, steps0, fed0 = comm_snapshot(engine), engine.stats.steps, _fed(engine)
    rids = []
    for p, ids in _workload_prompts(engine, cfg, bool(use_chat)):
        rids.append(engine.add_request(p, ids, params))
    done = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    elapsed = time.perf_counter() - start
    n_out = sum(len(o.outputs[0].token_ids) for o in done.values())
    for rid in rids:
        o = done[rid]
        print(f"\n>>> {o.prompt}\n{o.outputs[0].text}")
    comm = comm_delta(comm0, comm_snapshot(engine), engine.stats.steps - steps0,
                      _fed(engine) - fed0, elapsed)
    return {
        **comm,
        "task": "generate",
        "num_requests": len(rids),
        "output_tokens": n_out,
        "elapsed_s": elapsed,
        "output_tok_s": n_out / elapsed if elapsed > 0 else 0.0,
        "ttft_ms_mean": 1000 * sum(o.metrics.get("ttft", 0.0) for o in done.values()) / max(len(done), 1),
    }

"""``task=bench``: throughput and latency of the configured engine on ``cfg.workload``,
optionally side by side with HF transformers ``generate`` (``bench.baseline=hf``)."""

from __future__ import annotations

import gc
from typing import Any

from omegaconf import DictConfig

from infer.eval.bench import run_requests, warmup
from infer.eval.build_workload import build_workload
from infer.eval.evaluate import cache_dir_of
from infer.eval.memory import weight_mb
from infer.utils import parse_dtype

BASELINES = ("none", "hf")


def run(engine: Any, cfg: DictConfig) -> dict[str, Any]:
    """Serve the workload; metrics from every request's timings and the wall clock."""
    b = cfg.bench
    baseline = str(b.baseline or "none")
    if baseline not in BASELINES:
        raise ValueError(f"bench.baseline={baseline!r} is not supported; allowed: {list(BASELINES)}")
    reqs = build_workload(cfg.workload, engine.tokenizer, cache_dir_of(cfg))
    warmup(engine, reqs, int(b.warmup))
    m = run_requests(engine, reqs, b.request_rate, int(b.seed))
    m.pop("_outputs", None)  # RequestOutput objects: for scripts, not for metrics.json
    m["weight_mb"] = weight_mb(engine.runner.model)  # as stored: quantized schemes shrink it
    if baseline == "hf":
        from infer.eval.hf_baseline import load_hf, run_hf

        device = engine.runner.device
        model = load_hf(engine.model_path, parse_dtype(cfg.model.dtype), device)
        tok = engine.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else engine.eos_token_ids[0]
        hf = run_hf(model, reqs, int(b.hf_batch_size or cfg.engine.max_num_seqs), int(pad), device)
        del model
        gc.collect()
        m.update(hf)
        m["speedup_vs_hf"] = m["output_tok_s"] / hf["hf_output_tok_s"]
    return {"task": "bench", "workload": str(cfg.workload.name), **m}

"""The bench loop's metrics come from the engine's per-request timings; dependencies are
honoured (the peer baselines, HF included, are tested in test_peers.py)."""

from __future__ import annotations

import math
from typing import Any

from infer.eval import workloads as W
from infer.eval.bench import run_requests
from infer.eval.latency import percentile

CORPUS = list(range(1000, 3000))


def test_percentile() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0 and math.isnan(percentile([], 50))


def test_run_requests_metrics(tiny_engine: Any) -> None:
    reqs = W.synthetic(CORPUS, 5, [4, 12], [2, 5], seed=1)
    m = run_requests(tiny_engine, reqs)
    assert m["num_requests"] == 5 and m["errors"] == 0
    assert m["output_tokens"] == sum(r.max_tokens for r in reqs) == m["engine_output_tokens"]
    assert m["prompt_tokens"] == sum(len(r.prompt_token_ids) for r in reqs)
    assert m["output_tok_s"] == m["output_tokens"] / m["elapsed_s"]
    assert 0 < m["ttft_ms_p50"] <= m["ttft_ms_p99"] <= m["e2e_ms_p99"] <= 1000 * m["elapsed_s"] + 1
    assert m["tpot_ms_p50"] > 0 and m["peak_mem_mb"] > 0 and m["batch_size_mean"] >= 1
    steps = m["_steps"]
    assert len(steps) == m["steps"] and sum(s["new_tokens"] for s in steps) == m["output_tokens"]


def test_multi_turn_waits_for_previous_turn(tiny_engine: Any) -> None:
    reqs = W.multi_turn(tiny_engine.tokenizer, CORPUS, 2, 2, [4, 4], [2, 2])
    m = run_requests(tiny_engine, reqs)
    assert m["num_requests"] == 4 and m["output_tokens"] == 8
    # with dependencies at most two requests (one per conversation) ever run together
    assert max(s["batch_size"] for s in m["_steps"]) <= 2


def test_poisson_arrivals(tiny_engine: Any) -> None:
    reqs = W.synthetic(CORPUS, 3, [4, 6], [2, 2], seed=2)
    m = run_requests(tiny_engine, reqs, request_rate=50.0, seed=0)
    assert m["num_requests"] == 3 and m["output_tokens"] == 6


"""Drive the engine through a workload and measure throughput, latency and memory."""

from __future__ import annotations

import heapq
import random
import time
from typing import Any

from infer.eval.comm_metrics import comm_delta, comm_snapshot
from infer.eval.latency import summarize
from infer.eval.memory import PeakMemory
from infer.eval.progress import progress
from infer.eval.spec_metrics import snapshot, spec_delta
from infer.eval.workloads import Request
from infer.sampling_params import SamplingParams


def _params(r: Request) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=r.max_tokens, ignore_eos=r.ignore_eos)


def _cache_stats(engine: Any) -> dict[str, float]:
    """The cache policy's counters when it keeps any (prefix caches: cached_prompt_tokens)."""
    fn = getattr(engine.scheduler.cache, "stats", None)
    return {k: float(v) for k, v in fn().items()} if callable(fn) else {}


def warmup(engine: Any, reqs: list[Request], n: int) -> None:
    """Run ``n`` short requests (2 tokens) so first-call costs stay out of the timings."""
    for r in reqs[: max(int(n), 0)]:
        engine.add_request(None, r.prompt_token_ids, SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()


def run_requests(
    engine: Any, reqs: list[Request], request_rate: float | None = None, seed: int = 0
) -> dict[str, Any]:
    """Serve ``reqs`` with continuous batching and time everything.

    Requests without ``depends_on`` arrive at t=0 (``request_rate`` None/0) or as a Poisson
    process of ``request_rate`` req/s; dependents arrive when their dependency finishes.
    Returns the summary metrics (see ``latency.summarize``) plus peak_mem_mb, kv_usage_max,
    batch_size_mean, steps, errors, preemptions, computed_prompt_tokens (prompt tokens
    actually run, recomputation included), prefix-cache counters of this run
    (cached_prompt_tokens, evictions, prefix_hit_rate), the speculation columns of this run
    (``spec_metrics.SPEC_COLUMNS``: drafted, accepted, acceptance rate and length, draft and
    verify time), the communication columns of this run (``comm_metrics.COMM_COLUMNS``:
    collective time per step, all-reduced bytes per token; zeros in one process), ``_outputs`` (the RequestOutputs in workload order) and ``_steps``: one
    dict per engine step (batch_size, kv_usage, step_ms, new_tokens, tok_s, drafted,
    accepted).
    """
    rng = random.Random(seed)
    t_next, arrivals = 0.0, []
    for i, r in enumerate(reqs):
        if r.depends_on is None:
            arrivals.append((t_next, i))
            if request_rate:
                t_next += rng.expovariate(float(request_rate))
    heapq.heapify(arrivals)
    dependents: dict[int, list[int]] = {}
    for i, r in enumerate(reqs):
        if r.depends_on is not None:
            dependents.setdefault(r.depends_on, []).append(i)

    stats = engine.stats
    n0, out0, cp0 = len(stats.batch_sizes), stats.output_tokens, stats.computed_prompt_tokens
    pre0 = engine.scheduler.num_preemptions
    cache0 = _cache_stats(engine)
    spec0 = snapshot(stats)
    comm0 = comm_snapshot(engine)
    mem = PeakMemory(engine.runner.device)
    rid_idx: dict[str, int] = {}
    done: dict[int, Any] = {}
    steps: list[dict[str, float]] = []
    bar = progress(total=len(reqs), desc="bench", unit="req")
    start = time.perf_counter()

    def submit(i: int) -> None:
        rid_idx[engine.add_request(None, reqs[i].prompt_token_ids, _params(reqs[i]))] = i

    while len(done) < len(reqs):
        now = time.perf_counter() - start
        while arrivals and arrivals[0][0] <= now:
            submit(heapq.heappop(arrivals)[1])
        if not engine.has_unfinished():
            if not arrivals:
                raise RuntimeError("bench: requests left but none runnable (bad depends_on?)")
            time.sleep(max(arrivals[0][0] - now, 0.0))
            continue
        tok0, dr0, ac0 = stats.output_tokens, stats.spec_drafted, stats.spec_accepted
        t = time.perf_counter()
        outs = engine.step()
        dt = time.perf_counter() - t
        new = stats.output_tokens - tok0
        steps.append({
            "batch_size": float(stats.batch_sizes[-1]) if len(stats.batch_sizes) > n0 else 0.0,
            "kv_usage": float(stats.kv_usage[-1]) if stats.kv_usage else 0.0,
            "step_ms": 1000.0 * dt, "new_tokens": float(new), "tok_s": new / dt if dt > 0 else 0.0,
            "drafted": float(stats.spec_drafted - dr0), "accepted": float(stats.spec_accepted - ac0),
        })
        for o in outs:
            if o.finished:
                i = rid_idx[o.request_id]
                done[i] = o
                bar.update(1)
                for j in dependents.get(i, []):
                    submit(j)
        mem.sample()
    elapsed = time.perf_counter() - start
    bar.close()

    outs_in_order = [done[i] for i in range(len(reqs))]
    m = summarize(
        [o.metrics for o in outs_in_order],
        [len(r.prompt_token_ids) for r in reqs],
        [len(o.outputs[0].token_ids) for o in outs_in_order],
        elapsed,
    )
    bs = stats.batch_sizes[n0:]
    m.update({
        "steps": float(len(bs)),
        "batch_size_mean": sum(bs) / len(bs) if bs else 0.0,
        "kv_usage_max": max(stats.kv_usage[n0:], default=0.0),
        "peak_mem_mb": mem.peak_mb,
        "errors": float(sum(o.error is not None for o in outs_in_order)),
        "engine_output_tokens": float(stats.output_tokens - out0),
        "preemptions": float(engine.scheduler.num_preemptions - pre0),
        "computed_prompt_tokens": float(stats.computed_prompt_tokens - cp0),
    })
    # prefix caches: counters over this run only (warm-up and earlier work excluded)
    cache1 = _cache_stats(engine)
    for k in ("cached_prompt_tokens", "evictions"):
        if k in cache1:
            m[k] = cache1[k] - cache0.get(k, 0.0)
    if "cached_prompt_tokens" in cache1:
        seen = cache1.get("prompt_tokens", 0.0) - cache0.get("prompt_tokens", 0.0)
        m["prefix_hit_rate"] = m["cached_prompt_tokens"] / max(seen, 1.0)
    m.update(spec_delta(spec0, snapshot(stats)))
    fed = m["computed_prompt_tokens"] + m["engine_output_tokens"]
    m.update(comm_delta(comm0, comm_snapshot(engine), m["steps"], fed, elapsed))
    m["_outputs"] = outs_in_order
    m["_steps"] = steps
    return m


def single_stream(engine: Any, prompt: list[int], n: int, rounds: int = 3) -> tuple[float, list[int]]:
    """Decode tok/s of one request alone (prefill excluded: first to last token time) and its
    greedy output ids; best of ``rounds`` (the least disturbed run on a shared machine)."""
    best, out = 0.0, []
    for _ in range(max(int(rounds), 1)):
        engine.add_request(None, list(prompt), SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True))
        done = []
        while engine.has_unfinished():
            done += [o for o in engine.step() if o.finished]
        tt = done[0].metrics["token_times"]
        out = list(done[0].outputs[0].token_ids)
        if len(tt) > 1:
            best = max(best, (len(tt) - 1) / (tt[-1] - tt[0]))
    return best, out

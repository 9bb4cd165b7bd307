"""Prometheus metrics of a serving engine (``GET /metrics``).

Each server gets its own CollectorRegistry, so several servers (or tests) can live in one
process. Updated on the engine thread after every step and at every request's end.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from infer.outputs import RequestOutput

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.2, 0.5, 1.0, 2.5)


class ServerMetrics:
    """Counters, gauges and histograms named ``infer_*``; ``render()`` gives the text format."""

    def __init__(self, model_name: str, window_s: float = 10.0) -> None:
        self.registry = CollectorRegistry()
        r, lb = self.registry, ["model_name"]
        self.model = model_name
        self.prompt_tokens = Counter("infer_prompt_tokens", "Prompt tokens of finished requests", lb, registry=r)
        self.generation_tokens = Counter("infer_generation_tokens", "Tokens generated", lb, registry=r)
        self.requests = Counter("infer_requests", "Finished requests by finish reason",
                                lb + ["finish_reason"], registry=r)
        self.ttft = Histogram("infer_time_to_first_token_seconds", "Time to first token", lb,
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("infer_time_per_output_token_seconds", "Mean time per output token "
                              "after the first, per request", lb, buckets=_TPOT_BUCKETS, registry=r)
        self.e2e = Histogram("infer_e2e_request_latency_seconds", "Arrival to finish", lb,
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.kv_usage = Gauge("infer_kv_cache_usage_ratio", "Fraction of KV blocks in use", lb, registry=r)
        self.running = Gauge("infer_num_requests_running", "Sequences running", lb, registry=r)
        self.waiting = Gauge("infer_num_requests_waiting", "Sequences queued", lb, registry=r)
        self.preemptions = Gauge("infer_num_preemptions", "Preemptions since start", lb, registry=r)
        self.tok_s = Gauge("infer_generation_tokens_per_second",
                           f"Generated tokens per second over the last {window_s:g} s", lb, registry=r)
        self.acceptance = Gauge("infer_spec_decode_acceptance_rate",
                                "Accepted / drafted speculative tokens since start", lb, registry=r)
        self.spec_drafted = Gauge("infer_spec_decode_num_draft_tokens", "Draft tokens proposed", lb, registry=r)
        self.spec_accepted = Gauge("infer_spec_decode_num_accepted_tokens", "Draft tokens accepted",
                                   lb, registry=r)
        self._window = window_s
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._last_out_tokens: int | None = None

    def on_step(self, engine: Any) -> None:
        """After each engine step: token counters, KV usage, queue lengths, spec acceptance."""
        m = self.model
        out_tokens = int(engine.stats.output_tokens)
        new = out_tokens - (self._last_out_tokens if self._last_out_tokens is not None else out_tokens)
        self._last_out_tokens = out_tokens
        if new > 0:
            self.generation_tokens.labels(m).inc(new)
        now = time.perf_counter()
        self._recent.append((now, max(new, 0)))
        while self._recent and self._recent[0][0] < now - self._window:
            self._recent.popleft()
        span = now - self._recent[0][0] if len(self._recent) > 1 else 0.0
        self.tok_s.labels(m).set(sum(n for _, n in list(self._recent)[1:]) / span if span > 0 else 0.0)
        sched = engine.scheduler
        self.kv_usage.labels(m).set(float(sched.cache.usage()))
        self.running.labels(m).set(len(getattr(sched, "running", ())))
        self.waiting.labels(m).set(len(getattr(sched, "waiting", ())))
        self.preemptions.labels(m).set(int(getattr(sched, "num_preemptions", 0)))
        drafted = int(getattr(engine.stats, "spec_drafted", 0))
        accepted = int(getattr(engine.stats, "spec_accepted", 0))
        self.spec_drafted.labels(m).set(drafted)
        self.spec_accepted.labels(m).set(accepted)
        self.acceptance.labels(m).set(accepted / drafted if drafted else 0.0)

    def on_finish(self, out: RequestOutput) -> None:
        """At a request's end (finished, aborted or failed)."""
        m = self.model
        reason = next((c.finish_reason for c in out.outputs if c.finish_reason), None) or "unknown"
        self.requests.labels(m, reason).inc()
        self.prompt_tokens.labels(m).inc(len(out.prompt_token_ids))
        met = out.metrics or {}
        if "ttft" in met:
            self.ttft.labels(m).observe(float(met["ttft"]))
        if "tpot" in met:
            self.tpot.labels(m).observe(float(met["tpot"]))
        if "arrival" in met:
            self.e2e.labels(m).observe(time.perf_counter() - float(met["arrival"]))

    def render(self) -> bytes:
        return generate_latest(self.registry)

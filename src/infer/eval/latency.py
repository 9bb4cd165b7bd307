"""Throughput/latency statistics from per-request timings (seconds in, ms out)."""

from __future__ import annotations

import itertools
import math


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]); nan for an empty list."""
    if not xs:
        return math.nan
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def dist_ms(prefix: str, xs_s: list[float]) -> dict[str, float]:
    """{prefix}_ms_mean / _p50 / _p99 of durations given in seconds."""
    ms = [1000.0 * x for x in xs_s]
    mean = sum(ms) / len(ms) if ms else math.nan
    return {f"{prefix}_ms_mean": mean, f"{prefix}_ms_p50": percentile(ms, 50), f"{prefix}_ms_p99": percentile(ms, 99)}


def summarize(
    timings: list[dict[str, float | list[float]]], prompt_lens: list[int], out_lens: list[int],
    elapsed_s: float,
) -> dict[str, float]:
    """Bench metrics from each request's RequestOutput.metrics (arrival, ttft, tpot,
    token_times) and the wall clock ``elapsed_s`` of the whole run."""
    ttft = [float(m["ttft"]) for m in timings if "ttft" in m]
    tpot = [float(m["tpot"]) for m in timings if "tpot" in m]
    itl: list[float] = []
    e2e: list[float] = []
    for m in timings:
        tt = list(m.get("token_times", []))  # type: ignore[arg-type]
        itl += [b - a for a, b in itertools.pairwise(tt)]
        if tt:
            e2e.append(tt[-1] - float(m["arrival"]))  # type: ignore[arg-type]
    n_out, n_in = sum(out_lens), sum(prompt_lens)
    out = {
        "num_requests": float(len(timings)),
        "prompt_tokens": float(n_in),
        "output_tokens": float(n_out),
        "elapsed_s": elapsed_s,
        "req_s": len(timings) / elapsed_s,
        "output_tok_s": n_out / elapsed_s,
        "total_tok_s": (n_in + n_out) / elapsed_s,
    }
    for name, xs in (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2e", e2e)):
        out.update(dist_ms(name, xs))
    return out

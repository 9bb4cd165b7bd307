"""The JSON protocol between ``infer.eval.peers`` and a peer runner script (stdlib only: it
runs inside a peer's venv where ``infer`` is not installed).

Job (``job.json``, written by infer)::

    {"peer": "vllm", "model": "<HF folder>", "ir_dir": "<OpenVINO IR folder> | null",
     "dtype": "float32", "threads": 1, "cores": [0],
     "warmup": 2,                                   # short requests run before any timing
     "requests": [{"prompt_token_ids": [...], "max_tokens": 37}, ...],   # offline, all at t=0
     "single_stream": {"prompt_token_ids": [...], "max_tokens": 128, "rounds": 3} | null,
     "options": {...}}                              # peer-specific knobs (batch size, ...)

Result (``result.json``, written by the runner)::

    {"peer": "vllm", "version": "0.32.0", "settings": {...}, "startup_s": 95.1,
     "offline": {"elapsed_s": 50.2, "output_tokens": 6912, "output_tok_s": 137.7,
                 "outputs": [[token ids of request 0], ...]} | null,
     "single_stream": {"decode_tok_s": 24.1, "rounds": [23.0, 24.1, 23.8],
                       "output": [token ids]} | null}

Every request generates exactly ``max_tokens`` tokens (greedy, EOS ignored). Single-stream
decode rate = (n - 1) / (t(n tokens) - t(1 token)) for the same prompt, best of ``rounds``:
the difference removes prefill and per-call overhead, leaving n - 1 decode steps.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

# generate(list of (prompt ids, n new tokens)) -> list of output token-id lists, in order
Generate = Callable[[list[tuple[list[int], int]]], list[list[int]]]


def read_job() -> tuple[dict[str, Any], str]:
    """(job dict, result path) from ``argv[1:] = job.json result.json``."""
    if len(sys.argv) != 3:
        raise SystemExit(f"usage: {sys.argv[0]} job.json result.json")
    with open(sys.argv[1]) as f:
        return json.load(f), sys.argv[2]


def serve(job: dict[str, Any], out_path: str, generate: Generate, startup_s: float,
          version: str, settings: dict[str, Any]) -> None:
    """Warm up, run the offline batch and the single stream with ``generate``; write the result."""
    reqs = [(list(r["prompt_token_ids"]), int(r["max_tokens"])) for r in job.get("requests") or []]
    n_warm = max(int(job.get("warmup", 1)), 1)
    warm = reqs[:n_warm] or [(list(job["single_stream"]["prompt_token_ids"]), 2)]
    generate([(p, 2) for p, _ in warm])  # first-call costs (lazy compilation) stay out of timings
    res: dict[str, Any] = {"peer": job["peer"], "version": version, "settings": settings,
                           "startup_s": startup_s, "offline": None, "single_stream": None}
    if reqs:
        t = time.perf_counter()
        outs = generate(reqs)
        dt = time.perf_counter() - t
        n_out = sum(len(o) for o in outs)
        res["offline"] = {"elapsed_s": dt, "output_tokens": n_out, "output_tok_s": n_out / dt,
                          "outputs": [list(map(int, o)) for o in outs]}
    ss = job.get("single_stream")
    if ss:
        prompt, n, rates, out = list(ss["prompt_token_ids"]), int(ss["max_tokens"]), [], []
        for _ in range(max(int(ss.get("rounds", 1)), 1)):
            t = time.perf_counter()
            generate([(prompt, 1)])
            t1 = time.perf_counter() - t
            t = time.perf_counter()
            out = generate([(prompt, n)])[0]
            tn = time.perf_counter() - t
            rates.append((n - 1) / max(tn - t1, 1e-9))
        res["single_stream"] = {"decode_tok_s": max(rates), "rounds": rates,
                                "output": list(map(int, out))}
    with open(out_path, "w") as f:
        json.dump(res, f)

"""Single-stream decode speed and weight memory per quantization scheme, side by side.

Every scheme's engine is built in this one process (same threads, same prompt); the timing
rounds are interleaved across schemes and each scheme keeps its best round, so the ratios
to fp32 are measured under the same machine load (these machines are shared and noisy).

    .venv/bin/python scripts/bench_quant.py --threads 1 --schemes none,int8,w8a8,fp8,int4,awq

Decode tok/s = new tokens / (time of a 1+N-token generate - time of a 1-token generate), so
the prompt's prefill is excluded. Weight MB = bytes of every model parameter (embedding /
tied LM head included, kept in fp32 by every scheme) and, separately, of the quantized
Linear layers alone. Writes JSON to --out (default outputs/bench_quant.json).
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch

from infer import LLM, SamplingParams


def weight_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameter bytes, bytes of the quantized Linear layers' parameters)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    linear = sum(
        p.numel() * p.element_size()
        for m in model.modules() if hasattr(m, "out_sizes")
        for p in m.parameters(recurse=False)
    )
    return total, linear


def timed_generate(llm: LLM, ids: list[int], n: int) -> float:
    sp = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    t = time.perf_counter()
    llm.generate([{"prompt_token_ids": ids}], sp, use_tqdm=False)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schemes", default="none,int8,w8a8,fp8,int4,awq")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=64, help="decode tokens per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--out", default="outputs/bench_quant.json")
    ap.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    a = ap.parse_args()

    schemes = a.schemes.split(",")
    engines: dict[str, LLM] = {}
    rows: dict[str, dict[str, float | str]] = {}
    for q in schemes:
        t = time.perf_counter()
        llm = LLM(quant=q, threads=a.threads, kv_cache_tokens=4096, max_model_len=1024,
                  overrides=list(a.override))
        total, linear = weight_bytes(llm.engine.runner.model)
        engines[q] = llm
        rows[q] = {"quant": q, "weight_mb": total / 2**20, "linear_weight_mb": linear / 2**20,
                   "build_s": time.perf_counter() - t}
        print(f"built {q}: {total / 2**20:.1f} MB weights ({linear / 2**20:.1f} MB in Linear layers)", flush=True)
    tok = engines[schemes[0]].get_tokenizer()
    import pydoc_data.topics as topics

    ids = tok.encode(next(iter(topics.topics.values())), add_special_tokens=False)[: a.prompt_len]
    best = {q: float("inf") for q in schemes}
    for llm in engines.values():  # warm-up (first calls build kernels, allocate caches)
        timed_generate(llm, ids, 4)
    for r in range(a.rounds):
        for q, llm in engines.items():
            t1 = timed_generate(llm, ids, 1)
            tn = timed_generate(llm, ids, 1 + a.tokens)
            best[q] = min(best[q], (tn - t1) / a.tokens)
        print(f"round {r + 1}/{a.rounds}: " + "  ".join(f"{q}={1 / best[q]:.1f}" for q in schemes), flush=True)
    base = best.get("none", best[schemes[0]])
    print(f"\nthreads={a.threads}, {a.tokens} decode tokens after a {len(ids)}-token prompt, best of {a.rounds}")
    print(f"{'quant':8s} {'tok/s':>8s} {'vs fp32':>8s} {'weight MB':>10s} {'Linear MB':>10s}")
    for q in schemes:
        rows[q]["decode_tok_s"] = 1 / best[q]
        rows[q]["speedup_vs_fp32"] = base / best[q]
        r_ = rows[q]
        print(f"{q:8s} {r_['decode_tok_s']:8.2f} {r_['speedup_vs_fp32']:7.2f}x {r_['weight_mb']:10.1f} "
              f"{r_['linear_weight_mb']:10.1f}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": a.threads, "tokens": a.tokens, "rounds": a.rounds,
                               "torch": torch.__version__, "rows": list(rows.values())}, indent=2))
    print(f"saved {out}")
    del engines
    gc.collect()


if __name__ == "__main__":
    main()

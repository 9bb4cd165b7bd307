"""The C++ decoder stack against the eager per-module loop, side by side in one process.

Two engines on the same model (``kernels.decoder_stack=auto`` and ``=off``), same threads;
rounds alternate between them (ABAB...) so drift in the machine's memory bandwidth hits both.
Reports, per thread count: single-stream decode tok/s (one request, 32-token prompt, 128 new
tokens; best round) and offline tok/s (``--requests`` mixed requests at once; best round),
the ratio stack / eager, and whether the greedy tokens are identical.

    .venv/bin/python scripts/bench_decoder_stack.py --threads 1 2 --out experiments/08-avx2-host/bench_decoder_stack.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from infer import LLM, SamplingParams


def single_stream(llm: LLM, prompt: list[int], n: int) -> tuple[float, list[int]]:
    """Decode tok/s (first to last token) of one greedy request; its tokens."""
    sp = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    o = llm.generate([{"prompt_token_ids": prompt}], sp, use_tqdm=False)[0]
    tt = o.metrics["token_times"]
    return (len(tt) - 1) / (tt[-1] - tt[0]), list(o.outputs[0].token_ids)


def offline(llm: LLM, work: list[tuple[list[int], int]]) -> tuple[float, list[list[int]]]:
    """Output tok/s of all requests submitted at once; their tokens."""
    sps = [SamplingParams(temperature=0, max_tokens=o, ignore_eos=True) for _, o in work]
    t = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p, _ in work], sps, use_tqdm=False)
    dt = time.perf_counter() - t
    return sum(o for _, o in work) / dt, [list(o.outputs[0].token_ids) for o in outs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per engine (best kept)")
    ap.add_argument("--requests", type=int, default=16, help="offline requests (0 = skip offline)")
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--model", default=None, help="model option or HF folder (default: the embedded SmolLM2)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = ap.parse_args()
    rng = random.Random(0)
    prompt = [rng.randrange(100, 20000) for _ in range(32)]
    work = [([rng.randrange(100, 20000) for _ in range(rng.randint(32, 256))], rng.randint(32, 128))
            for _ in range(args.requests)]
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        llms = {m: LLM(model=args.model, threads=threads, overrides=[f"kernels.decoder_stack={m}"])
                for m in ("auto", "off")}
        best: dict[str, dict[str, float]] = {m: {"single": 0.0, "offline": 0.0} for m in llms}
        toks: dict[str, list] = {m: [] for m in llms}  # type: ignore[type-arg]  # every round's tokens
        for m, llm in llms.items():  # warm-up (and the stack's build)
            single_stream(llm, prompt, 8)
        for _ in range(args.rounds):
            for m, llm in llms.items():
                r, t1 = single_stream(llm, prompt, args.decode_tokens)
                best[m]["single"] = max(best[m]["single"], r)
                toks[m].append(t1)
                if work:
                    r, tw = offline(llm, work)
                    best[m]["offline"] = max(best[m]["offline"], r)
                    toks[m].extend(tw)
        row = {
            "threads": threads,
            "stack_built": llms["auto"].engine.runner.model.stack_slot.stack is not None,
            "single_stack": best["auto"]["single"], "single_eager": best["off"]["single"],
            "single_ratio": best["auto"]["single"] / best["off"]["single"],
            "offline_stack": best["auto"]["offline"], "offline_eager": best["off"]["offline"],
            "offline_ratio": best["auto"]["offline"] / best["off"]["offline"] if work else None,
            "greedy_identical": toks["auto"] == toks["off"],
        }
        print(json.dumps(row))
        results.append(row)
        for llm in llms.values():
            llm.shutdown()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"results": results, "requests": args.requests,
                                        "decode_tokens": args.decode_tokens}, indent=2))


if __name__ == "__main__":
    main()

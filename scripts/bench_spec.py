"""Speculative decoding side by side with plain decoding, in one process, on one target.

    OMP_NUM_THREADS=1 python scripts/bench_spec.py --out experiments/03-speculative/bench_spec.json

(a) Single stream: the ``grounded`` workload (repeat / edit / continue a given excerpt), one
    request at a time, greedy; decode tok/s (first to last output token) of spec=none, ngram,
    suffix, self mode=layers and self mode=quant (int8) on the SAME requests, interleaved per
    request (the variant order rotates so none always runs next to each proposer); speed-up =
    median over requests and rounds of the per-request ratio to spec=none's run of the same
    round. Acceptance rate/length and a time profile (draft / verify / other ms per step).
(b) Offline throughput: the ``synthetic`` workload at max_num_seqs=32, spec=none vs spec=ngram
    (adaptive policy; and the fixed policy, to show what adaptivity saves), alternated A,B,A,B;
    ratio of output tok/s per round, median.
Every variant's greedy output is compared token for token with spec=none's.

The target is built once (SmolLM2 fp32 by default, 1 thread); proposers are swapped between
runs (``infer.eval.spec_variants``). Proposers that learn from past requests (suffix) and the
adaptive policies are rebuilt at the start of each round, so a repeated request never finds
its own earlier output. The machine's load average is recorded around every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("INFER_PROGRESS", "0")

from infer import LLM
from infer.config_loader import compose_config
from infer.eval.bench import run_requests, warmup
from infer.eval.build_workload import build_workload
from infer.eval.spec_metrics import snapshot, spec_delta
from infer.eval.spec_variants import build_policy, build_variant, use_variant
from infer.sampling_params import SamplingParams

# variant label -> (spec option, spec.* overrides)
SINGLE = {
    "none": ("none", []),
    "ngram": ("ngram", []),
    "suffix": ("suffix", []),
    "self-layers": ("self", ["spec.mode=layers"]),
    "self-quant": ("self", ["spec.mode=quant", "spec.draft_quant=int8"]),
}
THROUGHPUT = {
    "none": ("none", []),
    "ngram": ("ngram", []),
    "ngram-fixed": ("ngram", ["spec.policy.kind=fixed"]),
}


def load1() -> float:
    return os.getloadavg()[0]


def run_one(engine: Any, ids: list[int], max_tokens: int) -> dict[str, Any]:
    """One greedy request alone; decode rate and where the step time went."""
    s0 = snapshot(engine.stats)
    steps0 = engine.stats.steps
    engine.add_request(None, ids, SamplingParams(temperature=0.0, max_tokens=max_tokens))
    done, wall = [], 0.0
    while engine.has_unfinished():
        t = time.perf_counter()
        done += [o for o in engine.step() if o.finished]
        wall += time.perf_counter() - t
    o = done[0]
    tt = o.metrics["token_times"]
    d = spec_delta(s0, snapshot(engine.stats))
    return {
        "ids": list(o.outputs[0].token_ids),
        "tokens": len(tt),
        "decode_s": tt[-1] - tt[0] if len(tt) > 1 else 0.0,
        "decode_tok_s": (len(tt) - 1) / (tt[-1] - tt[0]) if len(tt) > 1 else 0.0,
        "steps": engine.stats.steps - steps0,
        "step_wall_s": wall,
        **d,
    }


def summarize_single(runs: list[dict[str, Any]], base: list[dict[str, Any]]) -> dict[str, float]:
    """One variant's runs (aligned with spec=none's runs of the same request and round)."""
    ratios = [r["decode_tok_s"] / b["decode_tok_s"] for r, b in zip(runs, base) if b["decode_tok_s"] > 0]
    tok = sum(r["tokens"] - 1 for r in runs)
    dec = sum(r["decode_s"] for r in runs)
    drafted = sum(r["spec_drafted"] for r in runs)
    acc = sum(r["spec_accepted"] for r in runs)
    vsteps = sum(r["spec_steps"] for r in runs)
    steps = sum(r["steps"] for r in runs)
    draft_s = sum(r["draft_time_s"] for r in runs)
    verify_s = sum(r["verify_time_s"] for r in runs)
    wall = sum(r["step_wall_s"] for r in runs)
    return {
        "speedup_median": statistics.median(ratios) if ratios else float("nan"),
        "speedup_min": min(ratios, default=float("nan")),
        "speedup_max": max(ratios, default=float("nan")),
        "decode_tok_s": tok / dec if dec > 0 else 0.0,
        "acceptance_rate": acc / drafted if drafted else 0.0,
        "acceptance_length": 1.0 + acc / vsteps if vsteps else 1.0,
        "drafted": float(drafted),
        "accepted": float(acc),
        "tokens_per_step": sum(r["tokens"] for r in runs) / steps if steps else 0.0,
        "step_ms": 1000 * wall / steps if steps else 0.0,
        "draft_ms_per_step": 1000 * draft_s / steps if steps else 0.0,
        "verify_ms_per_step": 1000 * verify_s / steps if steps else 0.0,
        "other_ms_per_step": 1000 * (wall - draft_s - verify_s) / steps if steps else 0.0,
        "identical": float(sum(r["ids"] == b["ids"] for r, b in zip(runs, base))),
        "compared": float(len(runs)),
    }


def single_stream(llm: LLM, args: argparse.Namespace, log: list[dict[str, Any]]) -> dict[str, Any]:
    eng = llm.engine
    cfg = compose_config(["workload=grounded", f"workload.generator.num_requests={args.requests}"])
    reqs = build_workload(cfg.workload, eng.tokenizer, Path(args.cache_dir))
    names = [n for n in SINGLE if n in args.variants]
    fixed = {n: build_variant(eng, *SINGLE[n]) for n in names if SINGLE[n][0] in ("self", "none")}
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for n in names:  # warm-up: first-call costs (kernel builds, allocations) out of the timings
        use_variant(eng, *(fixed.get(n) or build_variant(eng, *SINGLE[n])))
        run_one(eng, reqs[0].prompt_token_ids[:64], 4)
    for rnd in range(args.rounds):
        # lookups rebuilt (the suffix tree must not hold this round's requests already);
        # model drafts keep their weights but get a policy without acceptance history
        fresh = {n: (fixed[n][0], build_policy(*SINGLE[n])) if n in fixed else build_variant(eng, *SINGLE[n])
                 for n in names}
        for i, r in enumerate(reqs):
            mt = min(r.max_tokens, args.max_tokens) if args.max_tokens else r.max_tokens
            shift = (rnd + i) % len(names)
            for n in names[shift:] + names[:shift]:
                use_variant(eng, *fresh[n])
                la = load1()
                res = run_one(eng, r.prompt_token_ids, mt)
                res.update(variant=n, round=rnd, request=i, load1_before=la, load1_after=load1())
                runs[n].append(res)
                log.append({k: v for k, v in res.items() if k != "ids"})
                print(f"  single round {rnd} req {i} {n:12s} {res['decode_tok_s']:6.1f} tok/s "
                      f"len {res['acceptance_length']:.2f} load {la:.1f}", flush=True)
    base = runs["none"]
    return {n: summarize_single(runs[n], base) for n in names}


def throughput(llm: LLM, args: argparse.Namespace, log: list[dict[str, Any]]) -> dict[str, Any]:
    eng = llm.engine
    eng.scheduler.max_num_seqs = args.max_num_seqs
    cfg = compose_config(["workload=synthetic", f"workload.generator.num_requests={args.tp_requests}"])
    reqs = build_workload(cfg.workload, eng.tokenizer, Path(args.cache_dir))
    names = [n for n in THROUGHPUT if n in args.tp_variants]
    res: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    use_variant(eng, *build_variant(eng, "none"))
    warmup(eng, reqs, 2)
    for rnd in range(args.tp_rounds):
        for n in names:
            use_variant(eng, *build_variant(eng, *THROUGHPUT[n]))
            la = load1()
            m = run_requests(eng, reqs)
            ids = [list(o.outputs[0].token_ids) for o in m.pop("_outputs")]
            steps = m.pop("_steps")
            row = {k: v for k, v in m.items() if isinstance(v, float)}
            row.update(variant=n, round=rnd, load1_before=la, load1_after=load1(),
                       spec_step_share=sum(s["drafted"] > 0 for s in steps) / max(len(steps), 1))
            res[n].append({**row, "ids": ids})
            log.append(row)
            print(f"  throughput round {rnd} {n:12s} {m['output_tok_s']:6.1f} tok/s "
                  f"drafted {m['spec_drafted']:.0f} len {m['acceptance_length']:.2f} load {la:.1f}", flush=True)
    out: dict[str, Any] = {}
    for n in names:
        rows, base = res[n], res["none"]
        ratios = [r["output_tok_s"] / b["output_tok_s"] for r, b in zip(rows, base)]
        out[n] = {
            "output_tok_s_median": statistics.median(r["output_tok_s"] for r in rows),
            "ratio_median": statistics.median(ratios),
            "ratios": ratios,
            "acceptance_rate": statistics.median(r["acceptance_rate"] for r in rows),
            "acceptance_length": statistics.median(r["acceptance_length"] for r in rows),
            "drafted": statistics.median(r["spec_drafted"] for r in rows),
            "spec_step_share": statistics.median(r["spec_step_share"] for r in rows),
            "batch_size_mean": statistics.median(r["batch_size_mean"] for r in rows),
            "identical": float(sum(a == b for r, br in zip(rows, base) for a, b in zip(r["ids"], br["ids"]))),
            "compared": float(sum(len(r["ids"]) for r in rows)),
        }
    return out


def table_single(s: dict[str, Any]) -> str:
    head = ("| spec | speed-up (median) | min-max | decode tok/s | accept rate | accept length | "
            "tokens/step | draft ms/step | verify ms/step | other ms/step | identical |")
    rows = [head, "|" + "---|" * 11]
    for n, v in s.items():
        rows.append(
            f"| {n} | {v['speedup_median']:.2f}x | {v['speedup_min']:.2f}-{v['speedup_max']:.2f} | "
            f"{v['decode_tok_s']:.1f} | {v['acceptance_rate']:.2f} | {v['acceptance_length']:.2f} | "
            f"{v['tokens_per_step']:.2f} | {v['draft_ms_per_step']:.1f} | {v['verify_ms_per_step']:.1f} | "
            f"{v['other_ms_per_step']:.1f} | {v['identical']:.0f}/{v['compared']:.0f} |")
    return "\n".join(rows)


def table_throughput(t: dict[str, Any]) -> str:
    head = ("| spec | output tok/s (median) | ratio to none (median) | per round | accept rate | "
            "accept length | steps with drafts | identical |")
    rows = [head, "|" + "---|" * 8]
    for n, v in t.items():
        rows.append(
            f"| {n} | {v['output_tok_s_median']:.1f} | {v['ratio_median']:.3f}x | "
            f"{', '.join(f'{x:.3f}' for x in v['ratios'])} | {v['acceptance_rate']:.2f} | "
            f"{v['acceptance_length']:.2f} | {100 * v['spec_step_share']:.0f}% | "
            f"{v['identical']:.0f}/{v['compared']:.0f} |")
    return "\n".join(rows)


def machine() -> dict[str, Any]:
    import torch

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="model group option")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--requests", type=int, default=8, help="grounded requests (single stream)")
    p.add_argument("--max-tokens", type=int, default=None, help="cap each grounded request's max_tokens")
    p.add_argument("--rounds", type=int, default=2, help="single-stream rounds over all requests")
    p.add_argument("--variants", default=",".join(SINGLE), help=f"single-stream variants: {list(SINGLE)}")
    p.add_argument("--tp-requests", type=int, default=32, help="synthetic requests (throughput)")
    p.add_argument("--tp-rounds", type=int, default=2, help="alternations of the throughput variants")
    p.add_argument("--tp-variants", default=",".join(THROUGHPUT), help=f"throughput variants: {list(THROUGHPUT)}")
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--self-policy", default="fixed", help="spec.policy.kind of the spec=self variants "
                   "(adaptive never drafts at the default prior: a draft forward costs too much to try)")
    p.add_argument("--self-layers-k", type=int, default=None, help="spec.num_tokens of self-layers (null = YAML)")
    p.add_argument("--self-quant-k", type=int, default=None, help="spec.num_tokens of self-quant (null = YAML)")
    p.add_argument("--skip-layers", default=None, help="spec.skip_layers of self-layers, e.g. 3,5,9 (null = YAML)")
    p.add_argument("--skip-single", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "infer"))
    p.add_argument("--out", default="bench_spec.json")
    args = p.parse_args()
    for n, k in (("self-layers", args.self_layers_k), ("self-quant", args.self_quant_k)):
        extra = [f"spec.policy.kind={args.self_policy}"] + ([f"spec.num_tokens={k}"] if k else [])
        SINGLE[n] = (SINGLE[n][0], SINGLE[n][1] + extra)
    if args.skip_layers:
        SINGLE["self-layers"][1].append(f"spec.skip_layers=[{args.skip_layers}]")
    args.variants = ["none"] + [v for v in args.variants.split(",") if v and v != "none"]
    args.tp_variants = ["none"] + [v for v in args.tp_variants.split(",") if v and v != "none"]
    for v in args.variants:
        if v not in SINGLE:
            raise SystemExit(f"--variants: {v!r} is not one of {list(SINGLE)}")
    for v in args.tp_variants:
        if v not in THROUGHPUT:
            raise SystemExit(f"--tp-variants: {v!r} is not one of {list(THROUGHPUT)}")

    t0 = time.time()
    llm = LLM(model=args.model, threads=args.threads, max_num_seqs=args.max_num_seqs)
    print(f"built target in {time.time() - t0:.0f} s; load average {os.getloadavg()}", flush=True)
    log: list[dict[str, Any]] = []
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "variants": {"single": SINGLE, "throughput": THROUGHPUT},
                              "command": "scripts/bench_spec.py"}
    if not args.skip_single:
        result["single_stream"] = single_stream(llm, args, log)
        print("\n(a) single stream, grounded workload, greedy\n" + table_single(result["single_stream"]))
    if not args.skip_throughput:
        result["throughput"] = throughput(llm, args, log)
        print(f"\n(b) offline throughput, synthetic workload, max_num_seqs={args.max_num_seqs}\n"
              + table_throughput(result["throughput"]))
    loads = [x for r in log for x in (r["load1_before"], r["load1_after"])]
    result["load1"] = {"min": min(loads, default=0), "median": statistics.median(loads) if loads else 0,
                       "max": max(loads, default=0)}
    result["runs"] = log
    result["elapsed_s"] = time.time() - t0
    print(f"\nload average (1 min) over the runs: min {result['load1']['min']:.1f}, median "
          f"{result['load1']['median']:.1f}, max {result['load1']['max']:.1f} on {os.cpu_count()} cores")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()

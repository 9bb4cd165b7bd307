"""attention=radix vs attention=paged on prefix-sharing workloads, side by side in one
process on the same model, threads and requests.

  * shared prefix: N questions after one ~600-token system prompt -> prompt tokens
    computed, end-to-end time, speed-up;
  * multi-turn chat: C conversations x T turns, each turn resending the history ->
    TTFT p50 of the later turns (second half), speed-up;
  * few-shot: shared examples + a question.
Outputs are checked token for token (radix must equal paged).

    .venv/bin/python scripts/bench_prefix.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from infer import LLM
from infer.eval.bench import run_requests, warmup
from infer.eval.workloads import few_shot, multi_turn, shared_prefix


def corpus(tok) -> list[int]:  # type: ignore[no-untyped-def]
    import pydoc_data.topics as t

    return tok.encode("\n\n".join(t.topics.values())[:600_000], add_special_tokens=False)


def serve(llm: LLM, reqs) -> dict:  # type: ignore[no-untyped-def, type-arg]
    warmup(llm.engine, reqs[-2:], 2)
    return run_requests(llm.engine, reqs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--prefix-len", type=int, default=600)
    ap.add_argument("--conversations", type=int, default=4)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--workloads", nargs="+", default=["shared_prefix", "few_shot", "multi_turn"])
    ap.add_argument("--out", default="outputs/bench_prefix.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    llms = {a: LLM(attention=a, threads=args.threads, kv_cache_memory_gb=2.0) for a in ("paged", "radix")}
    tok = llms["paged"].get_tokenizer()
    ids = corpus(tok)
    work = {
        "shared_prefix": shared_prefix(ids, args.requests, args.prefix_len, [16, 64], [16, 48], seed=0),
        "few_shot": few_shot(tok, ids, args.requests, 4, 120, [16, 64], [16, 48], seed=0),
        "multi_turn": multi_turn(tok, ids, args.conversations, args.turns, [32, 96], [32, 64], seed=0),
    }
    res: dict[str, dict] = {}  # type: ignore[type-arg]
    for name, reqs in work.items():
        if name not in args.workloads:
            continue
        runs = {a: serve(llm, reqs) for a, llm in llms.items()}
        same = [o.outputs[0].token_ids for o in runs["paged"]["_outputs"]] == \
            [o.outputs[0].token_ids for o in runs["radix"]["_outputs"]]
        row = {"requests": len(reqs), "identical_outputs": same}
        for a, m in runs.items():
            row[f"{a}_s"] = m["elapsed_s"]
            row[f"{a}_computed_prompt_tokens"] = m["computed_prompt_tokens"]
            row[f"{a}_ttft_ms_p50"] = m["ttft_ms_p50"]
        row["prompt_tokens"] = sum(len(r.prompt_token_ids) for r in reqs)
        row["radix_prefix_hit_rate"] = runs["radix"].get("prefix_hit_rate", 0.0)
        row["prefill_tokens_drop"] = 1 - row["radix_computed_prompt_tokens"] / row["paged_computed_prompt_tokens"]
        row["speedup_e2e"] = row["paged_s"] / row["radix_s"]
        if name == "multi_turn":
            late = [i for i in range(len(reqs)) if i % args.turns >= args.turns // 2]
            for a, m in runs.items():
                row[f"{a}_late_ttft_ms_p50"] = 1000 * statistics.median(
                    m["_outputs"][i].metrics["ttft"] for i in late)
            row["late_ttft_speedup"] = row["paged_late_ttft_ms_p50"] / row["radix_late_ttft_ms_p50"]
        res[name] = row
        print(name, json.dumps(row, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

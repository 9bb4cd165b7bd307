"""Search a layer-skip set for ``spec=self spec.mode=layers`` on calibration text.

    OMP_NUM_THREADS=1 python scripts/search_skip_layers.py --max-skip 12 --out skip.json

Greedy: start from nothing skipped; at each size add the layer whose removal keeps the
highest top-1 agreement of the skipped model with the full model, measured teacher-forced
over calibration windows (the second half of Python's pydoc text, ``calibration_part``).
Teacher-forced agreement is what verification sees: the draft runs on its own KV of the
accepted tokens, so a draft token is accepted iff the skipped model's argmax equals the
full model's at that position (greedy).

For each size it also prints the modelled speed-up of the best k: a verify step emits
E(a, k) = (1 - a^(k+1)) / (1 - a) tokens (acceptance independent per token with rate a) and
costs one target forward plus k draft forwards, each ``c`` of a target forward, where c is
the draft's share of the streamed weights (kept decoder layers plus embedding/LM head).
The chosen set is the one with the best modelled speed-up (or, if none beats 1, the largest
set whose agreement stays >= --min-agree). Optionally (--check) it runs the real engine
with ``spec=self`` on a few calibration prompts and reports the measured acceptance.

The forwards use the engine's own runner and paged KV: ``LayerSkipModel`` over the target's
modules with one KV cache for all layers, its ``keep`` list changed per candidate.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("INFER_PROGRESS", "0")

import torch
from hydra.utils import instantiate

from infer import LLM, SamplingParams
from infer.cache.paged import PagedKVCacheManager
from infer.eval.data import calibration_part, corpus_ids, pydoc_text, windows
from infer.runner import KVSpec, ModelRunner
from infer.scheduler import ScheduledSeq
from infer.sequence import Sequence
from infer.spec.layer_skip import LayerSkipModel
from infer.spec.policy import expected_tokens


class Agreement:
    """Teacher-forced top-1 agreement of a layer-skipped target with the full target."""

    def __init__(self, engine: Any, wins: list[list[int]]) -> None:
        target = engine.runner.model
        self.n_layers = len(target.layers)
        self.model = LayerSkipModel(target, list(range(self.n_layers)))
        kv0 = engine.runner.kv
        tokens = sum(len(w) for w in wins)
        blocks = -(-tokens // kv0.block_size) + len(wins)
        kv = KVSpec(blocks, kv0.block_size, kv0.num_layers, kv0.num_kv_heads, kv0.head_dim, kv0.dtype)
        backend = instantiate(engine.config.attention.backend)
        self.runner = ModelRunner(self.model, backend, kv, engine.runner.device)  # type: ignore[arg-type]
        self.cache = PagedKVCacheManager(blocks, kv0.block_size)
        self.wins = wins
        self.params = SamplingParams(temperature=0.0)
        self.ref = self._argmax(list(range(self.n_layers)))

    @torch.inference_mode()
    def _argmax(self, keep: list[int]) -> torch.Tensor:
        self.model.keep = sorted(keep)
        seqs = [Sequence(seq_id=i, request_id=f"w{i}", prompt=None, prompt_token_ids=list(w),
                         params=self.params, arrival=0.0) for i, w in enumerate(self.wins)]
        for s in seqs:
            if not self.cache.allocate(s, s.num_tokens):
                raise RuntimeError("calibration windows do not fit the search's KV cache")
        try:
            batch = [ScheduledSeq(s, s.num_tokens) for s in seqs]
            n = sum(s.num_tokens for s in seqs)
            logits = self.runner.execute(batch, [self.cache.block_table(s) for s in seqs], list(range(n)))
            return logits.argmax(-1)
        finally:
            for s in seqs:
                self.cache.free(s)

    def agreement(self, skip: set[int]) -> float:
        keep = [i for i in range(self.n_layers) if i not in skip]
        return float((self._argmax(keep) == self.ref).float().mean())


def draft_cost(model: Any, n_kept: int) -> float:
    """The draft's share of the target's streamed weights: kept decoder layers plus the
    embedding / final norm / LM head it always runs."""
    layers = sum(p.numel() for p in model.layers.parameters())
    total = sum(p.numel() for p in model.parameters())
    return (total - layers + layers * n_kept / len(model.layers)) / total


def best_k(a: float, c: float, k_max: int) -> tuple[int, float]:
    """The k in 1..k_max with the best modelled speed-up E(a, k) / (1 + k c)."""
    return max(((k, expected_tokens(a, k) / (1.0 + k * c)) for k in range(1, k_max + 1)), key=lambda t: t[1])


def check(args: argparse.Namespace, skip: list[int], prompts: list[list[int]], k: int) -> dict[str, float]:
    """Measured acceptance of spec=self with ``skip`` (fixed k) on calibration prompts."""
    llm = LLM(model=args.model, spec="self", threads=args.threads,
              overrides=[f"spec.skip_layers=[{','.join(map(str, skip))}]", "spec.policy.kind=fixed",
                         f"spec.num_tokens={k}"])
    eng = llm.engine
    for p in prompts:
        eng.add_request(None, p, SamplingParams(temperature=0.0, max_tokens=args.check_tokens, ignore_eos=True))
    while eng.has_unfinished():
        eng.step()
    s = eng.stats
    return {"acceptance_rate": s.acceptance_rate, "acceptance_length": s.acceptance_length,
            "drafted": float(s.spec_drafted)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="model group option or path")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--window", type=int, default=256, help="tokens per calibration window")
    p.add_argument("--windows", type=int, default=2, help="calibration windows")
    p.add_argument("--max-skip", type=int, default=12, help="largest skip set searched")
    p.add_argument("--protect", default="first,last", help="layers never skipped: first,last or none")
    p.add_argument("--k-max", type=int, default=8, help="largest k in the speed-up model")
    p.add_argument("--min-agree", type=float, default=0.7, help="fallback choice: largest set with this agreement")
    p.add_argument("--compare", default="4,7,10,13,16,19,22,25", help="a skip set to score for comparison")
    p.add_argument("--check", type=int, default=0, help="calibration prompts for a measured spec=self check (0 = skip)")
    p.add_argument("--check-tokens", type=int, default=64)
    p.add_argument("--out", default=None, help="JSON file for the search trace")
    args = p.parse_args()

    t0 = time.time()
    llm = LLM(model=args.model, threads=args.threads)
    eng = llm.engine
    ids = calibration_part(corpus_ids(eng.tokenizer, pydoc_text()))
    wins = windows(ids, args.window, args.windows)
    ag = Agreement(eng, wins)
    n = ag.n_layers
    protect = set()
    if "first" in args.protect:
        protect.add(0)
    if "last" in args.protect:
        protect.add(n - 1)
    model = eng.runner.model
    print(f"{n} layers; {sum(len(w) for w in wins)} calibration tokens; built in {time.time() - t0:.0f} s", flush=True)

    trace: list[dict[str, Any]] = []
    skip: set[int] = set()
    for size in range(1, args.max_skip + 1):
        t = time.time()
        if len(skip) + 1 >= n:
            break  # the draft must keep at least one layer
        scores = {i: ag.agreement(skip | {i}) for i in range(n) if i not in skip and i not in protect}
        if not scores:
            break
        layer = max(scores, key=lambda i: scores[i])
        skip.add(layer)
        a = scores[layer]
        c = draft_cost(model, n - len(skip))
        k, sp = best_k(a, c, args.k_max)
        trace.append({"size": size, "added": layer, "skip": sorted(skip), "agreement": a,
                      "draft_cost": c, "best_k": k, "modelled_speedup": sp})
        print(f"skip {len(skip):2d} (+{layer:2d}) agree {a:.3f} draft cost {c:.2f} best k {k} "
              f"modelled speed-up {sp:.2f} [{time.time() - t:.0f} s] {sorted(skip)}", flush=True)
        if args.out:  # the trace so far survives an interrupted search
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"model": args.model, "trace": trace}, indent=2))

    cmp_set = {int(x) for x in args.compare.split(",") if x.strip()} if args.compare else set()
    compare = None
    if cmp_set:
        a = ag.agreement(cmp_set)
        c = draft_cost(model, n - len(cmp_set))
        k, sp = best_k(a, c, args.k_max)
        compare = {"skip": sorted(cmp_set), "agreement": a, "draft_cost": c, "best_k": k, "modelled_speedup": sp}
        same = next((r for r in trace if r["size"] == len(cmp_set)), None)
        print(f"compare {sorted(cmp_set)}: agree {a:.3f}, modelled speed-up {sp:.2f} (k={k})"
              + (f"; greedy set of the same size: agree {same['agreement']:.3f}" if same else ""))

    winners = [r for r in trace if r["modelled_speedup"] > 1.0]
    if winners:
        chosen = max(winners, key=lambda r: r["modelled_speedup"])
    else:
        ok = [r for r in trace if r["agreement"] >= args.min_agree]
        chosen = ok[-1] if ok else trace[0]
    print(f"chosen: skip_layers={chosen['skip']} agreement {chosen['agreement']:.3f} "
          f"modelled speed-up {chosen['modelled_speedup']:.2f} at k={chosen['best_k']}"
          + ("" if winners else f" (no set beats 1.0; largest with agreement >= {args.min_agree})"))
    result: dict[str, Any] = {"model": args.model, "layers": n, "calibration_tokens": sum(len(w) for w in wins),
                              "trace": trace, "compare": compare, "chosen": chosen}
    if args.check:
        prompts = [ids[i * 97 : i * 97 + 64] for i in range(args.check)]
        result["check"] = {"chosen": check(args, chosen["skip"], prompts, chosen["best_k"])}
        if compare:
            result["check"]["compare"] = check(args, compare["skip"], prompts, chosen["best_k"])
        print(f"measured (spec=self, fixed k={chosen['best_k']}, {args.check} prompts x {args.check_tokens} "
              f"tokens): {result['check']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"saved {args.out}")


if __name__ == "__main__":
    main()

"""Per-step breakdown of the side-by-side bench's offline workload (48 requests, greedy): wall
time of each engine step, its forward (decoder) and its logits, summed by kind (steps with a
prefill chunk vs pure decode); saves every step's record to /tmp/prof_off_<threads>.json.

    .venv/bin/python experiments/15-kblocked-panels/scripts/profile_offline.py 1
"""
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
from bench_engine import corpus_tokens, make_workload, run_engine

from infer import LLM

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
llm = LLM(threads=threads)
tok = llm.get_tokenizer()
work = make_workload(corpus_tokens(tok, 200_000), 48, (32, 512), (32, 256), seed=0)
eng = llm.engine
runner = eng.runner
model = runner.model
rec = []
cur = {}
orig_exec = runner.execute
orig_model_fwd = model.forward
orig_logits = model.compute_logits
def ex(batch, tables, flat):
    t = time.perf_counter()
    out = orig_exec(batch, tables, flat)
    cur["exec"] = time.perf_counter() - t
    cur["tokens"] = sum(b.num_fed for b in batch)
    cur["seqs"] = len(batch)
    cur["prefill_tokens"] = sum(b.num_fed for b in batch if b.num_fed > 1)
    cur["rows"] = len(flat)
    return out
def fwd(*a, **k):
    t = time.perf_counter(); o = orig_model_fwd(*a, **k); cur["model"] = time.perf_counter() - t; return o
def lg(*a, **k):
    t = time.perf_counter(); o = orig_logits(*a, **k); cur["logits"] = time.perf_counter() - t; return o
runner.execute = ex; model.forward = fwd; model.compute_logits = lg
orig_step = eng.step
def step():
    cur.clear(); t = time.perf_counter(); o = orig_step(); cur["step"] = time.perf_counter() - t; rec.append(dict(cur)); return o
eng.step = step
run_engine(llm, work[:4])  # warm
rec.clear()
el, outs = run_engine(llm, work)
print("elapsed", el, "tok/s", sum(o for _, o in work) / el)
agg = collections.defaultdict(lambda: collections.Counter())
for r in rec:
    kind = "prefill" if r.get("prefill_tokens", 0) else "decode"
    a = agg[kind]
    a["n"] += 1
    for k in ("step", "exec", "model", "logits", "tokens", "rows", "seqs"):
        a[k] += r.get(k, 0)
for kind, a in agg.items():
    print(kind, {k: round(v, 3) for k, v in a.items()})
Path(f"/tmp/prof_off_{threads}.json").write_text(json.dumps(rec))

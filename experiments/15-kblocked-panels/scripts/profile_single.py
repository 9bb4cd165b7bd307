"""Where a single-stream decode token goes (32-token prompt, 128 new tokens, greedy): median per
step of the whole step, the runner's execute, its input preparation, the decoder forward and
the LM head, in 4 generations.

    .venv/bin/python experiments/15-kblocked-panels/scripts/profile_single.py 2
"""
import statistics
import sys
import time

from infer import LLM, SamplingParams

threads = int(sys.argv[1])
llm = LLM(threads=threads)
eng = llm.engine; runner = eng.runner; model = runner.model
cur = {}; rec = []
def wrap(obj, name, key):
    f = getattr(obj, name)
    def g(*a, **k):
        t = time.perf_counter(); o = f(*a, **k); cur[key] = cur.get(key, 0) + time.perf_counter() - t; return o
    setattr(obj, name, g)
wrap(runner, "execute", "exec"); wrap(model, "forward", "model"); wrap(model, "compute_logits", "logits"); wrap(runner, "prepare", "prepare")
orig_step = eng.step
def step():
    cur.clear(); t = time.perf_counter(); o = orig_step(); cur["step"] = time.perf_counter() - t; rec.append(dict(cur)); return o
eng.step = step
sp = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
for r in range(4):
    rec.clear()
    t0 = time.perf_counter()
    o = llm.generate([{"prompt_token_ids": list(range(100, 132))}], sp, use_tqdm=False)[0]
    tot = time.perf_counter() - t0
    d = rec[1:]
    med = {k: statistics.median(x.get(k, 0) for x in d) * 1e3 for k in ("step", "exec", "prepare", "model", "logits")}
    tt = o.metrics["token_times"]
    print(f"tok/s {(len(tt)-1)/(tt[-1]-tt[0]):.1f} gen-loop overhead/token {(tot - sum(x['step'] for x in rec))/len(rec)*1e3:.2f} ms", {k: round(v, 2) for k, v in med.items()})

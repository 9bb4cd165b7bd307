"""Single-stream A/B of builds of the dense linear kernel in the engine: one engine per source
(its decoder stack built on that build), SmolLM2 fp32, 32-token prompt, 128 new tokens, greedy,
rounds in random order; prints each build's best and median decode tok/s and the median
per-round ratio to the first. Asserts equal tokens.

    .venv/bin/python experiments/16-team-decode/scripts/ab_single_builds.py 2 8 /tmp/dl_old.cpp /tmp/dl_new.cpp

Arguments: threads, rounds, sources."""
import random
import statistics
import sys
from pathlib import Path

import infer.quant.dense_cpu as DC
from infer import LLM, SamplingParams
from infer.cpp_ext import load_cpp_extension

th = int(sys.argv[1]); rounds = int(sys.argv[2]); srcs = sys.argv[3:]
sp = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
P = [{"prompt_token_ids": list(range(100, 132))}]
llms = {}
for v in srcs:
    m = load_cpp_extension(Path(v).stem, Path(v), ["-O3", "-march=native"], v)
    DC.load = (lambda m=m: m)
    llm = LLM(threads=th); llm.generate(P, sp, use_tqdm=False)
    llms[Path(v).stem] = (m, llm)
res = {k: [] for k in llms}; outs = {}
for r in range(rounds):
    order = list(llms); random.shuffle(order)
    for k in order:
        m, llm = llms[k]; DC.load = (lambda m=m: m)
        o = llm.generate(P, sp, use_tqdm=False)[0]
        tt = o.metrics["token_times"]; res[k].append((len(tt) - 1) / (tt[-1] - tt[0])); outs[k] = list(o.outputs[0].token_ids)
ref = next(iter(llms))
for k in llms:
    assert outs[k] == outs[ref]
    print(f"{k} best {max(res[k]):.1f} median {statistics.median(res[k]):.1f} ratio {statistics.median(a / b for a, b in zip(res[k], res[ref])):.3f}")

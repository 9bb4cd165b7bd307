"""A/B of the engine's single stream (128 new tokens, greedy) with different builds of the dense
linear kernel: one engine per source file, rounds alternate their order, best of 2 per round.

    git show <old>:src/infer/quant/csrc/dense_linear_cpu.cpp > /tmp/dl_old.cpp
    cp src/infer/quant/csrc/dense_linear_cpu.cpp /tmp/dl_new.cpp
    .venv/bin/python experiments/14-balanced-gemv/scripts/ab_engine.py 2 8 /tmp/dl_old.cpp /tmp/dl_new.cpp

Arguments: threads, rounds, sources (the first is the reference). Asserts equal outputs."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
from bench_engine import read_bandwidth, weight_bytes

import infer.quant.dense_cpu as DC
from infer import LLM, SamplingParams
from infer.cpp_ext import load_cpp_extension

th = int(sys.argv[1]); rounds = int(sys.argv[2]); srcs = sys.argv[3:]
llms = {}
for v in srcs:
    m = load_cpp_extension(Path(v).stem, Path(v), ["-O3", "-march=native"], v)
    DC.load = (lambda m=m: m)
    llms[Path(v).stem] = (m, LLM(model=None, attention="paged", threads=th))
sp = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
wb = weight_bytes(next(iter(llms.values()))[1].engine.runner.model)
best = dict.fromkeys(llms, 0.0); bw = 0; rows = []; outs = {}
for r in range(rounds):
    bw = max(bw, read_bandwidth())
    order = list(llms) if r % 2 == 0 else list(llms)[::-1]
    row = {}
    for k in order:
        m, llm = llms[k]; DC.load = (lambda m=m: m)
        for _ in range(2):
            o = llm.generate([{"prompt_token_ids": list(range(100, 132))}], sp, use_tqdm=False)[0]
            tt = o.metrics["token_times"]; v = (len(tt) - 1) / (tt[-1] - tt[0])
            row[k] = max(row.get(k, 0), v); outs[k] = list(o.outputs[0].token_ids)
        best[k] = max(best[k], row[k])
    rows.append(row)
    print(" ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
base = next(iter(llms))
assert all(o == outs[base] for o in outs.values()), "outputs differ"
print(f"probe {bw/1e9:.2f} GB/s, bound {bw/wb:.1f} tok/s")
for k in llms:
    import statistics
    rat = [row[k] / row[base] for row in rows]
    print(f"{k}: best {best[k]:.2f} tok/s = {best[k]*wb/bw*100:.1f}% of probe; ratio to {base} per round: mean {statistics.mean(rat):.3f} median {statistics.median(rat):.3f}")

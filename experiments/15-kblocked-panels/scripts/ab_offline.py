"""A/B of the engine's offline throughput (the side-by-side bench's 48-request workload, greedy)
with different builds of the dense linear kernel: one engine per source file, rounds alternate
their order; prints each round's useful tok/s and the median of the per-round ratios.

    git show <old>:src/infer/quant/csrc/dense_linear_cpu.cpp > /tmp/dl_old.cpp
    cp src/infer/quant/csrc/dense_linear_cpu.cpp /tmp/dl_new.cpp
    .venv/bin/python experiments/15-kblocked-panels/scripts/ab_offline.py 1 3 /tmp/dl_old.cpp /tmp/dl_new.cpp

Arguments: threads, rounds, sources (the first is the reference). Asserts equal outputs."""
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
from bench_engine import corpus_tokens, make_workload

import infer.quant.dense_cpu as DC
from infer import LLM, SamplingParams
from infer.cpp_ext import load_cpp_extension

th = int(sys.argv[1]); rounds = int(sys.argv[2]); srcs = sys.argv[3:]
llms = {}
for v in srcs:
    m = load_cpp_extension(Path(v).stem, Path(v), ["-O3", "-march=native"], v)
    DC.load = (lambda m=m: m)
    llms[Path(v).stem] = (m, LLM(model=None, attention="paged", threads=th))
tok = next(iter(llms.values()))[1].get_tokenizer()
work = make_workload(corpus_tokens(tok, 200_000), 48, (32, 512), (32, 256), seed=0)
prompts = [{"prompt_token_ids": p} for p, _ in work]
params = [SamplingParams(temperature=0, max_tokens=o, ignore_eos=True) for _, o in work]
useful = sum(o for _, o in work)
for k, (m, llm) in llms.items():  # warm-up: builds the decoder stack with this kernel
    DC.load = (lambda m=m: m)
    llm.generate(prompts[:2], params[:2], use_tqdm=False)
rows, outs = [], {}
for r in range(rounds):
    order = list(llms) if r % 2 == 0 else list(llms)[::-1]
    row = {}
    for k in order:
        m, llm = llms[k]
        DC.load = (lambda m=m: m)
        t = time.perf_counter()
        o = llm.generate(prompts, params, use_tqdm=False)
        row[k] = useful / (time.perf_counter() - t)
        outs[k] = [list(x.outputs[0].token_ids) for x in o]
    rows.append(row)
    print(" ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True)
ref = next(iter(llms))
for k in list(llms)[1:]:
    assert outs[k] == outs[ref], f"{k}: outputs differ from {ref}"
    ratios = [row[k] / row[ref] for row in rows]
    print(f"{k} / {ref}: median {statistics.median(ratios):.3f}, per round "
          + ", ".join(f"{x:.3f}" for x in ratios) + "; outputs identical")

"""A/B of builds of the dense linear kernel on one-row fp32 GEMVs: SmolLM2's 4 projection shapes
x 30 layers of distinct random weights plus the LM head shape, 30 passes with the builds in
random order; prints each build's median pass, its median per-pass speed relative to the
first build and each shape's median time. Asserts equal outputs.

    git show HEAD~1:src/infer/quant/csrc/dense_linear_cpu.cpp > /tmp/dl_old.cpp
    cp src/infer/quant/csrc/dense_linear_cpu.cpp /tmp/dl_new.cpp
    .venv/bin/python experiments/16-team-decode/scripts/ab_gemv_chain.py 2 /tmp/dl_old.cpp /tmp/dl_new.cpp

Arguments: threads, sources."""
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from infer.cpp_ext import load_cpp_extension
from infer.quant import dense_cpu

torch.set_num_threads(int(sys.argv[1]))
mods = {Path(s).stem: load_cpp_extension("f32_" + Path(s).stem, Path(s).resolve(), ["-O3", "-march=native"], s) for s in sys.argv[2:]}
SH = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
g = torch.Generator().manual_seed(0)
layers = [(n, k, dense_cpu.pack(torch.randn(n, k, generator=g))) for _ in range(30) for n, k in SH]
layers.append((49152, 576, dense_cpu.pack(torch.randn(49152, 576, generator=g))))
xs = {k: torch.randn(1, k) for _, k in SH}
ts = {k: {s: [] for s in SH + [(49152, 576)]} for k in mods}
tot = {k: [] for k in mods}
ref = {}
for r in range(30):
    order = list(mods); random.shuffle(order)
    for name in order:
        m = mods[name]; dense_cpu.load = lambda m=m: m
        T0 = time.perf_counter()
        for n, k, p in layers:
            t = time.perf_counter(); o = dense_cpu.packed_linear(xs[k], p, n); ts[name][(n, k)].append(time.perf_counter() - t)
        tot[name].append(time.perf_counter() - T0)
        if r == 0: ref[name] = o
base = next(iter(mods))
for name in mods:
    assert torch.equal(ref[name], ref[base])
    per = " ".join(f"{n}x{k}:{statistics.median(ts[name][(n,k)])*1e6:.0f}us" for n, k in ts[name])
    print(f"{name:10s} {statistics.median(tot[name])*1e3:.2f} ms  speed vs {base}: {statistics.median([a/b for a,b in zip(tot[base], tot[name])]):.3f} | {per}")

"""A/B of builds of the dense linear kernel on one-row int4 (default) or int8 (KIND=int8) GEMVs:
SmolLM2's four projections x 30 layers of distinct random codes (G = 64 for int4), 30 passes
with the builds in random order; prints each build's median pass and its median per-pass speed
relative to the first. Asserts equal outputs.

    git show <old>:src/infer/quant/csrc/dense_linear_cpu.cpp > /tmp/dl_old.cpp
    cp src/infer/quant/csrc/dense_linear_cpu.cpp /tmp/dl_new.cpp
    KIND=int8 .venv/bin/python experiments/15-kblocked-panels/scripts/ab_code_stream.py 1 /tmp/dl_old.cpp /tmp/dl_new.cpp

Arguments: threads, sources."""
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from infer.cpp_ext import load_cpp_extension
from infer.quant import dense_cpu

torch.set_num_threads(int(sys.argv[1]))
mods = {Path(s).stem: load_cpp_extension("i4_" + Path(s).stem, Path(s).resolve(), ["-O3", "-march=native"], s) for s in sys.argv[2:]}
SH = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
g = torch.Generator().manual_seed(0)
layers = []
for _ in range(30):
    for n, k in SH:
        if os.environ.get("KIND") == "int8":
            q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
            layers.append((n, k, (dense_cpu.pack(q), torch.rand(n, generator=g) * 0.01 + 1e-4)))
        else:
            q4 = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=g)
            s4, o4 = torch.rand(n, k // 64, generator=g) * 0.01, -torch.rand(n, k // 64, generator=g) * 0.08
            layers.append((n, k, dense_cpu.pack_int4(q4, s4, o4)))
xs = {k: torch.randn(1, k) for _, k in SH}
ts = {k: [] for k in mods}
ref = {}
for r in range(30):
    order = list(mods); random.shuffle(order)
    for name in order:
        m = mods[name]; dense_cpu.load = lambda m=m: m
        t = time.perf_counter()
        if os.environ.get("KIND") == "int8":
            outs = [dense_cpu.packed_linear_int8(xs[k], p[0], n, p[1], None) for n, k, p in layers]
        else:
            outs = [dense_cpu.packed_linear_int4(xs[k], p[0], n, p[1], p[2], 64, None) for n, k, p in layers]
        ts[name].append(time.perf_counter() - t)
        if r == 0: ref[name] = outs[-1]
base = next(iter(mods))
for name in mods:
    assert torch.equal(ref[name], ref[base])
    print(f"{name:10s} {statistics.median(ts[name])*1e3:.2f} ms  speed vs {base}: {statistics.median([a/b for a,b in zip(ts[base], ts[name])]):.3f}")

"""One-row GEMVs of SmolLM2's 4 projection shapes x 30 layers back to back (random fp32 weights,
packed), the read probe (torch sum over 512 MB) and the LM head shape, at the given threads;
then each shape's median time and rate.

    .venv/bin/python experiments/16-team-decode/scripts/gemv_chain.py 2
"""
import statistics
import sys
import time

import torch

from infer import hugepages
from infer.quant import dense_cpu

torch.set_num_threads(int(sys.argv[1]))
SH = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
g = torch.Generator().manual_seed(0)
layers = []
for _ in range(30):
    for n, k in SH:
        layers.append((n, k, dense_cpu.pack(torch.randn(n, k, generator=g))))
xs = {k: torch.randn(1, k) for _, k in SH}
head = dense_cpu.pack(torch.randn(49152, 576, generator=g))
tot = sum(p.numel() * 4 for *_, p in layers)
x = hugepages.empty((512 * 2**20 // 4,), torch.float32).fill_(1.0)
per = {s: [] for s in SH}
for r in range(7):
    t = time.perf_counter(); x.sum(); tp = time.perf_counter() - t
    t = time.perf_counter()
    for n, k, p in layers:
        dense_cpu.packed_linear(xs[k], p, n)
    tc = time.perf_counter() - t
    t = time.perf_counter(); dense_cpu.packed_linear(xs[576], head, 49152); th = time.perf_counter() - t
    # per-shape timing
    for n, k, p in layers:
        t = time.perf_counter(); dense_cpu.packed_linear(xs[k], p, n); per[(n, k)].append(time.perf_counter() - t)
    print(f"probe {x.numel()*4/tp/1e9:.1f} GB/s | chain {tot/tc/1e9:.1f} GB/s ({tc*1e3:.2f} ms) | head {head.numel()*4/th/1e9:.1f} GB/s")
for (n, k), v in per.items():
    v.sort(); b = n * k * 4
    print(n, k, f"median {statistics.median(v)*1e6:.1f} us = {b/statistics.median(v)/1e9:.1f} GB/s")

"""A/B of builds of the CPU paged-attention kernel on decode: B sequences of CTX keys (one query
each, SmolLM2's 9 query / 3 KV heads of 64), 30 layers of distinct fp32 caches on 2 MiB pages
as the engine allocates them, REPS passes with the builds in random order; prints each build's
median pass, its K/V read rate and its speed relative to the first. Asserts equal outputs.

    cp src/infer/attention/csrc/paged_attention_cpu.cpp /tmp/pa_base.cpp   # + edited copies
    B=28 CTX=500 .venv/bin/python experiments/15-kblocked-panels/scripts/ab_decode_attention.py 1 /tmp/pa_base.cpp /tmp/pa_x.cpp

Arguments: threads, sources. Environment: B (28), CTX (500), BS (block size, 16), REPS (10)."""
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from infer.attention import cpu_kernel as ck
from infer.cpp_ext import load_cpp_extension

torch.set_num_threads(int(sys.argv[1]))
srcs = sys.argv[2:]
mods = {Path(s).stem: load_cpp_extension("pa_" + Path(s).stem, Path(s).resolve(), ck.BUILD_FLAGS, s) for s in srcs}
B, ctxlen, BS = int(os.environ.get("B", "28")), int(os.environ.get("CTX", "500")), int(os.environ.get("BS", "16"))
Hq, Hk, D = 9, 3, 64
mb = (ctxlen + BS - 1) // BS
NB = B * mb + 8
ks, vs = ck.kv_cache_shapes(NB, BS, Hk, D)
perm = torch.randperm(NB)[: B * mb].view(B, mb).to(torch.int32)
q = torch.randn(B, Hq, D)
qsl = torch.arange(B + 1, dtype=torch.int32)
cl = torch.full((B,), ctxlen, dtype=torch.int32)
from infer import hugepages


def hp(shape):
    return hugepages.empty(shape, torch.float32).normal_()
layers = [(hp(ks), hp(vs)) for _ in range(30)]
ref = None
times = {k: [] for k in mods}
for rep in range(int(os.environ.get("REPS", "10"))):
    order = list(mods); random.shuffle(order)
    for k in order:
        m = mods[k]
        t = time.perf_counter()
        for kc, vc in layers:
            o = m.paged_attention_fwd(q, kc, vc, perm, qsl, cl, 0.125)
        times[k].append(time.perf_counter() - t)
        if ref is None: ref = o
        assert torch.equal(o, ref), k
bytes_ = 30 * B * ctxlen * Hk * D * 2 * 4
base = next(iter(mods))
for k in mods:
    med = statistics.median(times[k])
    print(f"{k:12s} median {med*1e3:.1f} ms  {bytes_/med/1e9:.1f} GB/s  ratio vs {base}: {statistics.median(times[base])/med:.3f}")

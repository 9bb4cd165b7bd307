"""Fine-interleaved A/B of dense-linear builds over the model's own decode GEMVs: the 120
packed projections of SmolLM2's 30 layers and the LM head at one row, in decode order. Each pass
times every build once, in a random order; reports the median of per-pass time ratios.

    .venv/bin/python experiments/14-balanced-gemv/scripts/ab_fine.py 2 150 /tmp/dl_old.cpp /tmp/dl_new.cpp

Arguments: threads, passes, sources (the first is the reference)."""
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from infer import LLM
from infer.cpp_ext import load_cpp_extension

th = int(sys.argv[1]); n_iter = int(sys.argv[2]); torch.set_num_threads(th)
mods = {}
for v in sys.argv[3:]:
    mods[Path(v).stem] = load_cpp_extension(Path(v).stem, Path(v), ["-O3", "-march=native"], v)
llm = LLM(model=None, attention="paged", threads=th)
model = llm.engine.runner.model
seq = []
for i in model.layer_range:
    L = model.layers[i]
    for lin in (L.self_attn.qkv_proj, L.self_attn.o_proj, L.mlp.gate_up_proj, L.mlp.down_proj):
        spec = lin.quant.stack_linear(lin); seq.append((spec[1], spec[2]))
seq.append((model.head_packed, 49152))
xs = {}
for wp, n in seq: xs.setdefault(wp.shape[1], torch.randn(1, wp.shape[1]))
e = torch.empty(0)
names = list(mods); base = names[0]
times = {k: [] for k in names}
for it in range(n_iter):
    order = names[:]; random.shuffle(order)
    for k in order:
        f = mods[k].packed_linear
        t = time.perf_counter()
        for wp, n in seq: f(xs[wp.shape[1]], wp, n, e)
        times[k].append(time.perf_counter() - t)
for k in names:
    rat = [b / a for a, b in zip(times[k], times[base])]
    print(f"{k}: median {statistics.median(times[k])*1e3:.2f} ms, min {min(times[k])*1e3:.2f}; paired speed vs {base}: median {statistics.median(rat):.3f} mean {statistics.mean(rat):.3f}")

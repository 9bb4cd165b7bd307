"""Time the CPU paged-attention kernel on a decode step of many sequences (SmolLM2's heads),
or (``--prefill``) on fresh prompts.

One step = one call per layer, each layer with its OWN fp32 K/V cache (distinct memory, so the
step reads every sequence's keys and values from DRAM as the engine's decode does: 48
sequences x 340 keys x 30 layers = 750 MB per step). ``--hot`` reuses one layer's cache for
every layer instead (it stays in L3): the kernel's compute rate without the memory stream.
Prints ms per step (best of a few) and the K/V bytes per second.

    .venv/bin/python scripts/bench_decode_attention.py --threads 1
    .venv/bin/python scripts/bench_decode_attention.py --threads 1 --seqs 48 --context 96 --hot

``--prefill``: every sequence's ``--context`` tokens are new (a causal prompt, all its rows in
one call), reported as GFLOP/s (QK and PV over the causal pairs). ``--against SRC`` builds
another version of ``paged_attention_cpu.cpp`` (same cache layout) as a second extension and
times the two in alternating rounds, so both see the same machine minutes; it also reports
the largest difference between their outputs:

    git show HEAD~1:src/infer/attention/csrc/paged_attention_cpu.cpp > /tmp/old_attn.cpp
    .venv/bin/python scripts/bench_decode_attention.py --threads 1 --against /tmp/old_attn.cpp
    .venv/bin/python scripts/bench_decode_attention.py --threads 1 --seqs 4 --context 512 \
        --layers 8 --prefill --against /tmp/old_attn.cpp
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import ModuleType

import torch

from infer.attention import cpu_kernel
from infer.cpp_ext import load_cpp_extension


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seqs", type=int, default=48)
    ap.add_argument("--context", type=int, default=340, help="keys per sequence")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--q-heads", type=int, default=9)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--hot", action="store_true", help="one cache for every layer (from cache, not DRAM)")
    ap.add_argument("--prefill", action="store_true", help="all context tokens are new (causal prompts)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per kernel (best kept)")
    ap.add_argument("--against", type=Path, default=None,
                    help="another paged_attention_cpu.cpp (same cache layout) to time in alternating rounds")
    args = ap.parse_args()
    ours = cpu_kernel.load()
    if ours is None:
        raise SystemExit("the C++ paged-attention kernel did not build (no compiler?)")
    kernels: dict[str, ModuleType] = {"this tree": ours}
    if args.against is not None:
        if not args.against.is_file():
            raise SystemExit(f"--against: no such file {args.against}")
        other = load_cpp_extension("infer_attention_against", args.against.resolve(), cpu_kernel.BUILD_FLAGS,
                                   f"attention kernel from {args.against}")
        if other is None:
            raise SystemExit(f"{args.against} did not build")
        kernels[str(args.against)] = other
    torch.set_num_threads(args.threads)
    b, hk, d, bs, n = args.seqs, args.kv_heads, args.head_dim, args.block_size, args.context
    per_seq = -(-n // bs)
    nb = b * per_seq
    g = torch.Generator().manual_seed(0)
    n_caches = 1 if args.hot else args.layers
    caches = [(torch.randn(nb, hk, d, bs, generator=g), torch.randn(nb, hk, bs, d, generator=g))
              for _ in range(n_caches)]
    # blocks scattered as a long-running cache hands them out
    tables = torch.randperm(nb, generator=g).view(b, per_seq).to(torch.int32)
    new = n if args.prefill else 1
    q = torch.randn(b * new, args.q_heads, d, generator=g)
    qsl = torch.arange(0, b * new + 1, new, dtype=torch.int32)
    lens = torch.full((b,), n, dtype=torch.int32)
    kv_bytes = args.layers * 2 * b * n * hk * d * 4
    # QK and PV: 2 FLOP per multiply-add, over the causal (query, key) pairs of every q head
    flops = args.layers * b * (n * (n + 1) // 2) * args.q_heads * d * 4
    outs = {name: k.paged_attention_fwd(q, *caches[0], tables, qsl, lens, d**-0.5) for name, k in kernels.items()}
    best = {name: float("inf") for name in kernels}
    for rnd in range(args.rounds):
        for name in (list(kernels) if rnd % 2 == 0 else list(kernels)[::-1]):
            kern = kernels[name]
            t = time.perf_counter()
            for layer in range(args.layers):
                kc, vc = caches[layer % n_caches]
                kern.paged_attention_fwd(q, kc, vc, tables, qsl, lens, d**-0.5)
            best[name] = min(best[name], time.perf_counter() - t)
    shape = (f"{b} prompts x {n} tokens" if args.prefill else f"{b} seqs x {n} keys") + f" x {args.layers} layers"
    for name, t in best.items():
        rate = f"{flops / t / 1e9:.1f} GFLOP/s" if args.prefill else f"{kv_bytes / t / 1e9:.2f} GB/s of K/V"
        print(f"{name}: {shape}, {args.threads} thread(s){' (hot)' if args.hot else ''}: "
              f"{t * 1e3:.1f} ms per step, {rate}")
    if len(kernels) == 2:
        a, o = outs.values()
        print(f"speed-up this tree / against: {best[str(args.against)] / best['this tree']:.3f}x; "
              f"outputs differ by at most {(a - o).abs().max().item():.2e}")


if __name__ == "__main__":
    main()

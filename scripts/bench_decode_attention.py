"""Time the CPU paged-attention kernel on a decode step of many sequences (SmolLM2's heads).

One step = one call per layer, each layer with its OWN fp32 K/V cache (distinct memory, so the
step reads every sequence's keys and values from DRAM as the engine's decode does: 48
sequences x 340 keys x 30 layers = 750 MB per step). ``--hot`` reuses one layer's cache for
every layer instead (it stays in L3): the kernel's compute rate without the memory stream.
Prints ms per step (best of a few) and the K/V bytes per second.

    .venv/bin/python scripts/bench_decode_attention.py --threads 1
    .venv/bin/python scripts/bench_decode_attention.py --threads 1 --seqs 48 --context 96 --hot
"""

from __future__ import annotations

import argparse
import time

import torch

from infer.attention import cpu_kernel


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
    args = ap.parse_args()
    if cpu_kernel.load() is None:
        raise SystemExit("the C++ paged-attention kernel did not build (no compiler?)")
    torch.set_num_threads(args.threads)
    b, hk, d, bs = args.seqs, args.kv_heads, args.head_dim, args.block_size
    per_seq = -(-args.context // bs)
    nb = b * per_seq
    g = torch.Generator().manual_seed(0)
    n_caches = 1 if args.hot else args.layers
    caches = [(torch.randn(nb, hk, d, bs, generator=g), torch.randn(nb, hk, bs, d, generator=g))
              for _ in range(n_caches)]
    # blocks scattered as a long-running cache hands them out
    tables = torch.randperm(nb, generator=g).view(b, per_seq).to(torch.int32)
    q = torch.randn(b, args.q_heads, d, generator=g)
    qsl = torch.arange(b + 1, dtype=torch.int32)
    lens = torch.full((b,), args.context, dtype=torch.int32)
    kv_bytes = args.layers * 2 * b * args.context * hk * d * 4
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for layer in range(args.layers):
            kc, vc = caches[layer % n_caches]
            cpu_kernel.paged_attention(q, kc, vc, tables, qsl, lens, d**-0.5)
        best = min(best, time.perf_counter() - t)
    print(f"{b} seqs x {args.context} keys x {args.layers} layers, {args.threads} thread(s)"
          f"{' (hot)' if args.hot else ''}: {best * 1e3:.1f} ms per step, "
          f"{kv_bytes / best / 1e9:.2f} GB/s of K/V")


if __name__ == "__main__":
    main()

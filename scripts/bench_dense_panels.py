"""Time the packed dense kernel (``dense_cpu.packed_linear``) over SmolLM2's layer shapes.

Thirty layers' worth of DISTINCT random weights (~425 MB fp32), so every pass streams them from
memory as a decode or prefill step of the engine does; one pass = the four projections of every
layer (qkv, o, gate+up, down) at M activation rows. Prints ms per pass (best of a few),
GFLOP/s and the weight bytes per second. Used for experiments/09-xeon-host (next-panel
prefetch: run it before and after a kernel change, on a quiet machine).

    .venv/bin/python scripts/bench_dense_panels.py --threads 1 --rows 1 6 12 48 256 2048
"""

from __future__ import annotations

import argparse
import time

import torch

from infer.quant import dense_cpu

# (out, in) of SmolLM2-135M's projections: fused qkv, o, fused gate+up, down
SHAPES = [(576 + 2 * 192, 576), (576, 576), (2 * 1536, 576), (576, 1536)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 6, 12, 48, 256, 2048])
    ap.add_argument("--layers", type=int, default=30)
    args = ap.parse_args()
    if dense_cpu.load() is None:
        raise SystemExit("the C++ dense kernel did not build (no compiler?)")
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    packed = [[dense_cpu.pack(torch.randn(n, k, generator=g) * 0.02) for n, k in SHAPES] for _ in range(args.layers)]
    wbytes = sum(n * k * 4 for n, k in SHAPES) * args.layers
    for m in args.rows:
        xs = {k: torch.randn(m, k, generator=g) for k in {k for _, k in SHAPES}}
        flops = sum(2 * m * n * k for n, k in SHAPES) * args.layers
        best = float("inf")
        for _ in range(3 if m >= 256 else 5):
            t = time.perf_counter()
            for layer in packed:
                for (n, k), wp in zip(SHAPES, layer):
                    dense_cpu.packed_linear(xs[k], wp, n)
            best = min(best, time.perf_counter() - t)
        print(f"M={m:5d}  {best * 1e3:8.1f} ms  {flops / best / 1e9:7.1f} GFLOP/s  "
              f"{wbytes / best / 1e9:6.1f} GB/s of weights", flush=True)


if __name__ == "__main__":
    main()

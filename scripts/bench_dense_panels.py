"""Time the packed dense kernel (``dense_cpu.packed_linear``) over SmolLM2's layer shapes.

Thirty layers' worth of DISTINCT random weights (~425 MB fp32), so every pass streams them from
memory as a decode or prefill step of the engine does; one pass = the four projections of every
layer (qkv, o, gate+up, down) at M activation rows. Prints ms per pass (best of a few),
GFLOP/s and the weight bytes per second. Used for experiments/09-xeon-host (next-panel
prefetch: run it before and after a kernel change, on a quiet machine).

    .venv/bin/python scripts/bench_dense_panels.py --threads 1 --rows 1 6 12 48 256 2048

A/B against another version of the kernel source (same packed layout), built as a second
extension, the two timed in alternating rounds so both see the same machine minutes:

    git show HEAD~1:src/infer/quant/csrc/dense_linear_cpu.cpp > /tmp/old_dense.cpp
    .venv/bin/python scripts/bench_dense_panels.py --threads 2 --rows 1 --against /tmp/old_dense.cpp --passes 100

Each pass times every kernel once in a random order; the A/B line gives the median over passes
of the two kernels' time ratio (needed on a host whose bandwidth drifts by ~10% within seconds).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path
from types import ModuleType

import torch

from infer.cpp_ext import load_cpp_extension
from infer.quant import dense_cpu

# (out, in) of SmolLM2-135M's projections: fused qkv, o, fused gate+up, down
SHAPES = [(576 + 2 * 192, 576), (576, 576), (2 * 1536, 576), (576, 1536)]
_EMPTY = torch.empty(0)  # no bias


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 6, 12, 48, 256, 2048])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--passes", type=int, default=5,
                    help="passes per row count (each times every kernel once; at most 3 from 256 rows)")
    ap.add_argument("--against", type=Path, default=None,
                    help="another dense_linear_cpu.cpp (same packed layout) to time in alternating rounds")
    args = ap.parse_args()
    ours = dense_cpu.load()
    if ours is None:
        raise SystemExit("the C++ dense kernel did not build (no compiler?)")
    kernels: dict[str, ModuleType] = {"this tree": ours}
    if args.against is not None:
        if not args.against.is_file():
            raise SystemExit(f"--against: no such file {args.against}")
        other = load_cpp_extension("infer_dense_against", args.against.resolve(), ["-O3", "-march=native"],
                                   f"dense kernel from {args.against}")
        if other is None:
            raise SystemExit(f"{args.against} did not build")
        kernels[str(args.against)] = other
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    packed = [[dense_cpu.pack(torch.randn(n, k, generator=g) * 0.02) for n, k in SHAPES] for _ in range(args.layers)]
    wbytes = sum(n * k * 4 for n, k in SHAPES) * args.layers
    rng = random.Random(0)
    for m in args.rows:
        xs = {k: torch.randn(m, k, generator=g) for k in {k for _, k in SHAPES}}
        flops = sum(2 * m * n * k for n, k in SHAPES) * args.layers
        times: dict[str, list[float]] = {name: [] for name in kernels}
        for _ in range(args.passes if m < 256 else min(args.passes, 3)):
            order = list(kernels.items())
            rng.shuffle(order)  # each pass times every kernel once, in a random order
            for name, mod in order:
                t = time.perf_counter()
                for layer in packed:
                    for (n, k), wp in zip(SHAPES, layer):
                        mod.packed_linear(xs[k], wp, n, _EMPTY)
                times[name].append(time.perf_counter() - t)
        ref = times["this tree"]
        for name, ts in times.items():
            b = min(ts)
            # the host's bandwidth drifts within seconds: the median of per-pass ratios (both
            # kernels timed back to back) resolves ~1% where best-of-N does not
            vs = (f"  (this tree runs {statistics.median(o / t for o, t in zip(ts, ref)):.3f}x as fast, "
                  f"median of {len(ts)} paired passes; best {b / min(ref):.3f}x)") if name != "this tree" else ""
            print(f"M={m:5d}  {b * 1e3:8.2f} ms  {flops / b / 1e9:7.1f} GFLOP/s  "
                  f"{wbytes / b / 1e9:6.1f} GB/s of weights  [{name}]{vs}", flush=True)


if __name__ == "__main__":
    main()

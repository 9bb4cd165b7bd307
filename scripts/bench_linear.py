"""Linear layers against the memory and compute rooflines, on SmolLM2-135M's weight shapes.

One run, side by side, at each thread count (default 1 and 2):
  * memory read bandwidth: torch ``sum`` over a 512 MB fp32 tensor, best of 5;
  * peak GEMM FLOP/s: F.linear on a 1024 x 1024 x 1024 problem (fp32, bf16), best of 3;
  * per activation-row count M (default 1, 4, 16, 64, 512): one "model pass" = every linear
    weight matrix of the model once (30 layers of qkv 576->960, o 576->576, gate_up 576->3072,
    down 1536->576, plus the tied 49152 x 576 LM head), through F.linear and through the C++
    kernel (infer.quant.dense_cpu.packed_linear on weights packed beforehand), in fp32 and bf16. For M <= 16 the pass streams all
    30 layers (537 MB fp32, far beyond the 32 MB L3) so it measures DRAM streaming; for larger
    M it is compute-bound and one layer plus the LM head is timed (and scaled to the model).
  * the quantized CPU kernels (int8, int4/AWQ layout) at M = 1 over the same pass, for the
    "quantized stays faster than fp32" check.

Printed per line: ms per model pass, weight GB/s, fraction of the measured read bandwidth,
GFLOP/s, fraction of the measured peak GEMM, and the implied decode bound in tok/s
(M / pass time: the speed if the linear layers were the whole step). Also saved as JSON.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_linear.py [--threads 1 2] [--rows 1 4 16 64 512]

Noisy shared machine: quote the ratios within one run (kernel vs F.linear vs bandwidth); on a
loaded machine ``--threads 1 --clock cpu`` times process CPU time instead of wall time.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from infer.quant import cpu_kernel, dense_cpu

HIDDEN, INTER, VOCAB, LAYERS = 576, 1536, 49152, 30
# (name, out_features N, in_features K) per layer
LAYER_SHAPES = [("qkv", 960, HIDDEN), ("o", HIDDEN, HIDDEN), ("gate_up", 2 * INTER, HIDDEN),
                ("down", HIDDEN, INTER)]
STREAM_MAX_ROWS = 16  # up to this M the pass streams all layers (memory-bound regime)


CLOCK = time.perf_counter  # --clock cpu: time.process_time


def best_of(fn: Callable[[], object], reps: int) -> float:
    """Best time of ``reps`` calls after one warm-up call (seconds)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t = CLOCK()
        fn()
        best = min(best, CLOCK() - t)
    return best


def read_bandwidth() -> float:
    """GB/s of torch.sum over 512 MB of fp32, best of 5."""
    a = torch.ones(128 * 2**20)
    t = best_of(lambda: a.sum(), 5)
    return a.numel() * 4 / t / 1e9


def peak_gflops(dtype: torch.dtype) -> float:
    """The faster of F.linear and the kernel on 1024^3 (weights in cache, compute-bound),
    best of 3: the GEMM peak this machine shows."""
    x, w = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    wp = dense_cpu.pack(w)
    t = min(best_of(lambda: F.linear(x, w), 3), best_of(lambda: dense_cpu.packed_linear(x, wp, 1024), 3))
    return 2 * 1024**3 / t / 1e9


def make_weights(dtype: torch.dtype, copies: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``copies`` sets of the layer matrices, and the LM head."""
    layers = [torch.randn(n, k, dtype=dtype) * 0.02 for _ in range(copies) for _, n, k in LAYER_SHAPES]
    return layers, torch.randn(VOCAB, HIDDEN, dtype=dtype) * 0.02


def model_bytes(dtype: torch.dtype) -> int:
    per_layer = sum(n * k for _, n, k in LAYER_SHAPES)
    return (LAYERS * per_layer + VOCAB * HIDDEN) * torch.finfo(dtype).bits // 8


class Packed:
    """A weight prepared for the kernel once (as quant=none does after loading)."""

    def __init__(self, w: torch.Tensor) -> None:
        self.wp, self.shape = dense_cpu.pack(w), w.shape


def kernel_linear(x: torch.Tensor, w: Packed) -> torch.Tensor:
    return dense_cpu.packed_linear(x, w.wp, w.shape[0])


def time_pass(lin: Callable, layers: list, head: object, m: int, reps: int, dt: torch.dtype
              ) -> float:
    """Seconds for one pass over ``layers`` + ``head`` at M=m, scaled to the full model when
    ``layers`` holds fewer than LAYERS copies."""
    xs = {k: torch.randn(m, k, dtype=dt) for k in (HIDDEN, INTER)}

    def layer_pass() -> None:
        for w in layers:
            lin(xs[w.shape[1]], w)

    t_layers = best_of(layer_pass, reps)
    t_head = best_of(lambda: lin(xs[HIDDEN], head), reps)
    return t_layers * LAYERS * len(LAYER_SHAPES) / len(layers) + t_head


def quant_pass(kind: str, reps: int) -> float:
    """Seconds for an M=1 pass of the int8 / int4 (group 64, AWQ's layout) CPU kernels over the
    layer matrices (LM head excluded: it stays full precision under every quant method)."""
    x = {k: torch.randn(1, k) for k in (HIDDEN, INTER)}
    mats = []
    for _ in range(LAYERS):
        for _, n, k in LAYER_SHAPES:
            if kind == "int8":
                mats.append((torch.randint(-127, 127, (n, k), dtype=torch.int8), torch.rand(n), None))
            else:
                g = k // 64
                mats.append((torch.randint(0, 255, (n, k // 2), dtype=torch.uint8),
                             torch.rand(n, g), torch.rand(n, g)))

    def run() -> None:
        for w, s, o in mats:
            xk = x[w.shape[1] if kind == "int8" else 2 * w.shape[1]]
            if kind == "int8":
                cpu_kernel.linear(xk, w, s, None, cpu_kernel.INT8)
            else:
                cpu_kernel.linear(xk, w, s, None, cpu_kernel.INT4, o, 64)

    return best_of(run, reps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 64, 512])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="bench_linear.json")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: process CPU time, which leaves out the time other jobs hold the "
                    "core (meaningful with one thread only)")
    a = ap.parse_args()
    global CLOCK
    if a.clock == "cpu":
        assert a.threads == [1], "--clock cpu sums all threads' time: use it with --threads 1"
        CLOCK = time.process_time
    assert dense_cpu.load() is not None, "the dense CPU kernel did not build"
    rows: list[dict] = []
    plain = {d: make_weights(getattr(torch, d), LAYERS) for d in a.dtypes}
    packed = {d: ([Packed(w) for w in ls], Packed(h)) for d, (ls, h) in plain.items()}
    for th in a.threads:
        torch.set_num_threads(th)
        bw = read_bandwidth()
        peak = {d: peak_gflops(getattr(torch, d)) for d in a.dtypes}
        print(f"\n== threads={th}: read bandwidth {bw:.1f} GB/s; peak GEMM "
              + ", ".join(f"{d} {p:.0f} GFLOP/s" for d, p in peak.items()))
        print(f"{'dtype':9} {'M':>4} {'impl':9} {'ms/pass':>8} {'GB/s':>6} {'%bw':>5} "
              f"{'GFLOP/s':>8} {'%peak':>6} {'tok/s bound':>11}")
        for d in a.dtypes:
            dt = getattr(torch, d)
            nbytes = model_bytes(dt)
            flops_per_row = 2 * nbytes // (torch.finfo(dt).bits // 8)
            print(f"{d:9} {'':>4} {'roofline':9} {nbytes / bw / 1e6:8.1f} {bw:6.1f} {1:5.0%} "
                  f"{'':>8} {'':>6} {bw * 1e9 / nbytes:11.1f}")
            for m in a.rows:
                reps = a.reps if m <= 64 else 1
                for name, fn, (layers, head) in (("F.linear", F.linear, plain[d]),
                                                 ("kernel", kernel_linear, packed[d])):
                    sub = layers if m <= STREAM_MAX_ROWS else layers[: len(LAYER_SHAPES)]
                    t = time_pass(fn, sub, head, m, reps, dt)
                    gbs, gfl = nbytes / t / 1e9, flops_per_row * m / t / 1e9
                    r = dict(threads=th, dtype=d, rows=m, impl=name, ms=t * 1e3, gbs=gbs,
                             bw_frac=gbs / bw, gflops=gfl, peak_frac=gfl / peak[d],
                             tok_s=m / t, read_bw=bw, peak=peak[d])
                    rows.append(r)
                    print(f"{d:9} {m:4} {name:9} {t * 1e3:8.1f} {gbs:6.1f} {gbs / bw:5.0%} "
                          f"{gfl:8.1f} {gfl / peak[d]:6.0%} {m / t:11.1f}")
        if cpu_kernel.load() is not None:
            fp32 = next((r for r in rows if r["threads"] == th and r["dtype"] == "float32"
                         and r["rows"] == 1 and r["impl"] == "kernel"), None)
            layers_only = None
            if fp32 is not None:  # the fp32 kernel over the same layer matrices (no LM head)
                lay, _ = packed["float32"]
                x = {k: torch.randn(1, k) for k in (HIDDEN, INTER)}
                layers_only = best_of(lambda: [kernel_linear(x[w.shape[1]], w) for w in lay],
                                      a.reps)
            for kind in ("int8", "int4"):
                t = quant_pass(kind, a.reps)
                ratio = f"  {layers_only / t:.2f}x the fp32 kernel" if layers_only else ""
                print(f"quant {kind}: M=1 layer pass {t * 1e3:.1f} ms{ratio}")
                rows.append(dict(threads=th, dtype=kind, rows=1, impl="quant_kernel",
                                 ms=t * 1e3, fp32_kernel_ms=(layers_only or 0) * 1e3))
    with open(a.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"\nsaved {a.out}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Time every Triton kernel against its torch reference on a GPU, next to the device's
measured peaks (one run, one process: the numbers are side by side).

    python scripts/bench_kernels.py                  # all ops, bf16, prints + saves JSON
    python scripts/bench_kernels.py --only paged_decode_attention --out bench.json
    python scripts/bench_kernels.py --roofline       # analytic bytes/FLOPs/H100 roofline, no GPU

Per case it reports kernel and reference time (triton.testing.do_bench, median ms), achieved
GB/s and TFLOP/s from the bytes/FLOPs the op must move/do at minimum, and the fraction of the
peaks measured in the same run (bandwidth: a large device copy; compute: a large
torch.matmul in bf16, torch._scaled_mm in fp8, torch._int_mm in int8). Without a GPU it
says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

# H100 SXM datasheet numbers for the analytic roofline (dense, no sparsity).
H100 = {"bw": 3.35e12, "bf16": 989e12, "fp8": 1979e12, "int8": 1979e12}


@dataclass
class Case:
    """One benchmark: ``setup(device)`` -> (args, kwargs) shared by kernel and reference."""

    name: str
    op: str
    shape: str
    bytes: float  # minimum HBM traffic
    flops: float
    compute: str  # which compute peak bounds it: bf16 | fp8 | int8
    setup: Callable[[str], tuple[tuple, dict]]


def _bf16(*shape, device):
    return torch.randn(*shape, device=device, dtype=torch.bfloat16)


def _paged(num_seqs, ctx, kv_heads, head_dim, block_size, device, cache_dtype=torch.bfloat16):
    blocks_per_seq = math.ceil(ctx / block_size)
    nb = num_seqs * blocks_per_seq
    shape = (nb, block_size, kv_heads, head_dim)
    kc = torch.randn(shape, device=device).to(cache_dtype)
    vc = torch.randn(shape, device=device).to(cache_dtype)
    perm = torch.randperm(nb, device=device).to(torch.int32)
    bt = perm.view(num_seqs, blocks_per_seq)
    lens = torch.full((num_seqs,), ctx, device=device, dtype=torch.int32)
    scales = None
    if cache_dtype != torch.bfloat16:
        scales = tuple(torch.rand(shape[:3], device=device) * 0.01 for _ in range(2))
    return kc, vc, bt, lens, scales


def cases() -> list[Case]:
    """Llama-3-8B-like shapes: H=32, Hkv=8, D=128, hidden 4096, intermediate 14336, bf16."""
    H, HKV, D, HID, INTER, BS = 32, 8, 128, 4096, 14336, 16
    out: list[Case] = []

    def decode(num_seqs, ctx, cache_dtype=torch.bfloat16, splits=None):
        el = 1 if cache_dtype != torch.bfloat16 else 2
        kv_bytes = 2 * num_seqs * ctx * HKV * D * el + (
            2 * num_seqs * ctx * HKV * 4 if el == 1 else 0
        )
        tag = "" if el == 2 else " kv=fp8"

        def setup(device):
            kc, vc, bt, lens, sc = _paged(num_seqs, ctx, HKV, D, BS, device, cache_dtype)
            q = _bf16(num_seqs, H, D, device=device)
            kw = {"num_splits": splits}
            if sc:
                kw.update(k_scale=sc[0], v_scale=sc[1])
            return (q, kc, vc, bt, lens, D**-0.5), kw

        out.append(
            Case(
                f"decode S={num_seqs} ctx={ctx}{tag}",
                "paged_decode_attention",
                f"q[{num_seqs},{H},{D}] ctx {ctx} bs {BS}",
                kv_bytes + 2 * num_seqs * H * D * 2,
                4 * num_seqs * H * ctx * D,
                "bf16",
                setup,
            )
        )

    decode(64, 2048)
    decode(1, 32768)
    decode(64, 2048, torch.float8_e4m3fn)

    def prefill(num_seqs, length):
        def setup(device):
            kc, vc, bt, lens, _ = _paged(num_seqs, length, HKV, D, BS, device)
            qsl = torch.arange(num_seqs + 1, device=device, dtype=torch.int32) * length
            return (_bf16(num_seqs * length, H, D, device=device), kc, vc, bt, qsl, lens,
                    D**-0.5), {}  # fmt: skip

        tokens = num_seqs * length
        out.append(
            Case(
                f"prefill S={num_seqs} L={length}",
                "paged_prefill_attention",
                f"q[{tokens},{H},{D}] causal",
                2 * tokens * H * D * 2 + 2 * tokens * HKV * D * 2,
                4 * num_seqs * H * D * length * (length + 1) / 2,
                "bf16",
                setup,
            )
        )

    prefill(4, 2048)

    T = 4096

    def store_setup(device, cache_dtype=torch.bfloat16):
        kc, vc, _, _, sc = _paged(1, T, HKV, D, BS, device, cache_dtype)
        slots = torch.randperm(T, device=device)
        args = (_bf16(T, HKV, D, device=device), _bf16(T, HKV, D, device=device), kc, vc, slots)
        return args + (sc if sc else ()), {}

    out.append(Case("store_kvcache T=4096", "store_kvcache", f"k,v[{T},{HKV},{D}]",
                    4 * T * HKV * D * 2, 0, "bf16", store_setup))  # fmt: skip
    out.append(Case("store_kvcache T=4096 fp8", "store_kvcache", f"k,v[{T},{HKV},{D}] -> fp8",
                    2 * T * HKV * D * (2 + 1) + 2 * T * HKV * 4, 0, "bf16",
                    lambda d: store_setup(d, torch.float8_e4m3fn)))  # fmt: skip

    def rms_setup(d):
        return (_bf16(T, HID, device=d), _bf16(HID, device=d), 1e-5), {}

    out.append(Case("rms_norm T=4096", "rms_norm", f"x[{T},{HID}]", 2 * T * HID * 2, 4 * T * HID,
                    "bf16", rms_setup))  # fmt: skip
    out.append(Case("fused_add_rms_norm T=4096", "fused_add_rms_norm", f"x,res[{T},{HID}]",
                    4 * T * HID * 2, 5 * T * HID, "bf16",
                    lambda d: ((_bf16(T, HID, device=d), _bf16(T, HID, device=d),
                                _bf16(HID, device=d), 1e-5), {})))  # fmt: skip

    def rope_setup(device):
        cs = torch.randn(8192, D, device=device)
        pos = torch.randint(0, 8192, (T,), device=device)
        return (pos, _bf16(T, H, D, device=device), _bf16(T, HKV, D, device=device), cs), {}

    out.append(Case("rotary T=4096", "rotary_embedding", f"q[{T},{H},{D}] k[{T},{HKV},{D}]",
                    2 * T * (H + HKV) * D * 2 + T * D * 4, 3 * T * (H + HKV) * D, "bf16",
                    rope_setup))  # fmt: skip
    out.append(Case("silu_and_mul T=4096", "silu_and_mul", f"x[{T},{2 * INTER}]",
                    3 * T * INTER * 2, 5 * T * INTER, "bf16",
                    lambda d: ((_bf16(T, 2 * INTER, device=d),), {})))  # fmt: skip
    out.append(Case("quantize_per_token_fp8 T=4096", "quantize_per_token_fp8", f"x[{T},{HID}]",
                    T * HID * 3 + T * 4, 3 * T * HID, "bf16",
                    lambda d: ((_bf16(T, HID, device=d),), {})))  # fmt: skip

    def scaled(m, n, k, qdtype, op):
        def setup(device):
            a = torch.randn(m, k, device=device)
            b = torch.randn(n, k, device=device)
            if qdtype == torch.int8:
                a, b = (x.mul(20).round().clamp(-127, 127).to(torch.int8) for x in (a, b))
            else:
                a, b = a.to(qdtype), b.to(qdtype)
            return (a, b, torch.rand(m, 1, device=device), torch.rand(n, device=device),
                    torch.bfloat16), {}  # fmt: skip

        kind = "int8" if qdtype == torch.int8 else "fp8"
        out.append(Case(f"{op} M={m}", op, f"[{m},{k}] x [{n},{k}]^T",
                        (m * k + n * k) + m * n * 2, 2 * m * n * k, kind, setup))  # fmt: skip

    def awq(m, n, k, group=128):
        def setup(device):
            qw = torch.randint(-(2**31), 2**31 - 1, (k, n // 8), device=device, dtype=torch.int32)
            qz = torch.randint(-(2**31), 2**31 - 1, (k // group, n // 8), device=device,
                               dtype=torch.int32)  # fmt: skip
            sc = (torch.rand(k // group, n, device=device) * 0.01).half()
            return (torch.randn(m, k, device=device).half(), qw, qz, sc, group), {}

        wbytes = k * n / 2 + (k // group) * n * (2 + 0.5)
        out.append(Case(f"awq_gemm M={m}", "awq_gemm", f"[{m},{k}] x int4[{k},{n}] g{group}",
                        wbytes + m * k * 2 + m * n * 2, 2 * m * n * k, "bf16", setup))  # fmt: skip

    for m in (16, 2048):
        scaled(m, INTER, HID, torch.int8, "w8a8_int8_gemm")
        scaled(m, INTER, HID, torch.float8_e4m3fn, "fp8_scaled_gemm")
        awq(m, INTER, HID)
    return out


def roofline_s(case: Case, peaks: dict) -> float:
    return max(case.bytes / peaks["bw"], case.flops / peaks[case.compute])


def print_roofline() -> None:
    print(
        f"Analytic roofline on H100 SXM: {H100['bw'] / 1e12:.2f} TB/s, "
        f"{H100['bf16'] / 1e12:.0f} TFLOP/s bf16, {H100['fp8'] / 1e12:.0f} fp8/int8 (dense)"
    )
    cols = f"| {'MB moved':>9} | {'GFLOP':>8} | {'roofline us':>11} | bound |"
    print(f"| {'case':30} | {'shape':35} " + cols)
    print(f"|{'-' * 32}|{'-' * 37}|{'-' * 11}|{'-' * 10}|{'-' * 13}|-------|")
    for c in cases():
        t_bw, t_fl = c.bytes / H100["bw"], c.flops / H100[c.compute]
        bound = "mem" if t_bw >= t_fl else c.compute
        print(f"| {c.name:30} | {c.shape:35} | {c.bytes / 1e6:9.1f} | {c.flops / 1e9:8.2f} | "
              f"{max(t_bw, t_fl) * 1e6:11.1f} | {bound:5} |")  # fmt: skip


def measure_peaks(do_bench) -> dict:
    """Peak bandwidth from a 2 GiB device copy; peak FLOP/s from large GEMMs, same run."""
    peaks = {}
    src = torch.empty(2**29, device="cuda", dtype=torch.float32)  # 2 GiB
    dst = torch.empty_like(src)
    ms = do_bench(lambda src=src, dst=dst: dst.copy_(src))
    peaks["bw"] = 2 * src.numel() * 4 / (ms * 1e-3)
    src = dst = None  # free 4 GiB before the GEMMs
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    peaks["bf16"] = 2 * n**3 / (do_bench(lambda: torch.matmul(a, b)) * 1e-3)
    try:
        a8, b8 = a.to(torch.float8_e4m3fn), b.t().contiguous().to(torch.float8_e4m3fn).t()
        one = torch.ones((), device="cuda")
        ms = do_bench(lambda: torch._scaled_mm(a8, b8, one, one, out_dtype=torch.bfloat16))
        peaks["fp8"] = 2 * n**3 / (ms * 1e-3)
    except (RuntimeError, TypeError) as e:  # pre-Hopper GPU or old torch
        print(f"fp8 peak not measured ({e}); using the bf16 peak")
        peaks["fp8"] = peaks["bf16"]
    try:
        ai, bi = (torch.randint(-100, 100, (n, n), device="cuda", dtype=torch.int8) for _ in "ab")
        peaks["int8"] = 2 * n**3 / (do_bench(lambda: torch._int_mm(ai, bi)) * 1e-3)
    except RuntimeError as e:
        print(f"int8 peak not measured ({e}); using the bf16 peak")
        peaks["int8"] = peaks["bf16"]
    return peaks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="op names to run (default: all)")
    ap.add_argument("--out", default="outputs/bench_kernels.json", help="JSON results path")
    ap.add_argument("--roofline", action="store_true", help="print the analytic table and exit")
    ap.add_argument("--no-ref", action="store_true", help="skip timing the torch references")
    args = ap.parse_args()
    if args.roofline:
        print_roofline()
        return 0
    if not torch.cuda.is_available():
        print("bench_kernels.py needs a CUDA GPU and none was found: GPU timings not measured.")
        print("(`--roofline` prints the analytic bytes/FLOPs/roofline table without a GPU.)")
        return 0

    from triton.testing import do_bench

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))
    from infer_kernels import get_op

    torch.manual_seed(0)
    peaks = measure_peaks(do_bench)
    print(f"device: {torch.cuda.get_device_name()} | measured peaks: "
          f"{peaks['bw'] / 1e9:.0f} GB/s, bf16 {peaks['bf16'] / 1e12:.0f} TFLOP/s, "
          f"fp8 {peaks['fp8'] / 1e12:.0f}, int8 {peaks['int8'] / 1e12:.0f} TOP/s")  # fmt: skip
    header = (f"{'case':30} {'kernel ms':>10} {'ref ms':>9} {'speedup':>8} {'GB/s':>7} "
              f"{'TFLOP/s':>8} {'%bw':>5} {'%flop':>6} {'%roofline':>9}")  # fmt: skip
    print(header)
    rows = []
    for case in cases():
        if args.only and case.op not in args.only:
            continue
        fargs, kwargs = case.setup("cuda")
        kernel, ref = get_op(case.op, "triton"), get_op(case.op, "torch")
        ms = do_bench(partial(kernel, *fargs, **kwargs))
        ref_ms = float("nan") if args.no_ref else do_bench(partial(ref, *fargs, **kwargs))
        s = ms * 1e-3
        row = {
            "case": case.name, "op": case.op, "shape": case.shape, "kernel_ms": ms,
            "ref_ms": ref_ms, "gbps": case.bytes / s / 1e9, "tflops": case.flops / s / 1e12,
            "frac_bw": case.bytes / s / peaks["bw"],
            "frac_flops": case.flops / s / peaks[case.compute],
            "frac_roofline": roofline_s(case, peaks) / s,
        }  # fmt: skip
        rows.append(row)
        print(f"{case.name:30} {ms:10.4f} {ref_ms:9.4f} {ref_ms / ms:8.2f} {row['gbps']:7.0f} "
              f"{row['tflops']:8.1f} {row['frac_bw']:5.0%} {row['frac_flops']:6.0%} "
              f"{row['frac_roofline']:9.0%}")  # fmt: skip
        fargs = kwargs = None  # free this case's tensors
        torch.cuda.empty_cache()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "peaks": peaks}
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

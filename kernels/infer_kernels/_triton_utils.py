"""Triton helpers shared by several kernels.

Rounding note: a float->int cast truncates on the GPU and in the interpreter, and the
interpreter's fp32->fp8 cast mis-rounds when the mantissa carries into the exponent (e.g.
124.3 -> 64 instead of 128). So kernels round in fp32 themselves and cast only values that
are already exactly representable; that is correct everywhere and costs a few ALU ops in
kernels that are memory bound anyway.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Triton element types for the torch dtypes our kernels store.
TL_DTYPE = {
    torch.float32: tl.float32,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.int8: tl.int8,
    torch.float8_e4m3fn: tl.float8e4nv,
}


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 operands: exact IEEE products (to match the fp32 reference); other dtypes ignore it."""
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def round_half_even(x):
    """Round fp32 ``x`` (|x| < 2**22) to the nearest integer, ties to even (= torch.round).

    Adding 1.5 * 2**23 pushes the fraction bits out of the fp32 mantissa, and IEEE addition
    rounds to nearest even; subtracting restores the magnitude. No fast-math reassociation
    happens in Triton's fp pipeline, so the pair is not folded away.
    """
    return (x + 12582912.0) - 12582912.0


@triton.jit
def round_to_e4m3(x):
    """Round fp32 ``x`` (|x| <= 448) to the nearest float8_e4m3fn value, ties to even, in fp32."""
    bits = x.to(tl.int32, bitcast=True)
    # Normal range: keep 3 of fp32's 23 mantissa bits, round-half-even; a carry correctly
    # bumps the exponent. -1048576 == 0xFFF00000 (sign, exponent, top 3 mantissa bits).
    lsb = (bits >> 20) & 1
    normal = ((bits + 0x7FFFF + lsb) & -1048576).to(tl.float32, bitcast=True)
    # Subnormal range (|x| < 2**-6): e4m3 values are multiples of 2**-9. 1.5 * 2**14 has an
    # fp32 ulp of exactly 2**-9, so this add/sub rounds to that grid (ties to even).
    sub = (x + 24576.0) - 24576.0
    return tl.where(tl.abs(x) < 0.015625, sub, normal)

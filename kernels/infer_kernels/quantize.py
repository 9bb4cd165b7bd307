"""Per-token (per-row) symmetric activation quantization to int8 / fp8 for the W8A8 GEMMs."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import FLOAT_DTYPES, QUANT_KV_QMAX, check_last_dim_contiguous, check_tensor
from ._triton_utils import next_pow2, round_half_even, round_to_e4m3
from .reference.quant import quantize_per_token_fp8_ref, quantize_per_token_int8_ref

__all__ = [
    "quantize_per_token_fp8",
    "quantize_per_token_fp8_ref",
    "quantize_per_token_int8",
    "quantize_per_token_int8_ref",
]

MAX_K = 65536  # one row per program


@triton.jit
def _quantize_rows_kernel(
    x_ptr, q_ptr, scale_ptr, stride_xm, stride_qm,
    K: tl.constexpr, BLOCK_K: tl.constexpr, IS_FP8: tl.constexpr, QMAX: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_K)
    mask = offs < K
    x = tl.load(x_ptr + row * stride_xm + offs, mask=mask, other=0.0).to(tl.float32)
    scale = tl.max(tl.abs(x), axis=0) / QMAX
    y = x / tl.where(scale > 0, scale, 1.0)
    y = tl.minimum(tl.maximum(y, -QMAX), QMAX)
    # Round in fp32, then cast an exact value (see _triton_utils for why).
    y = round_to_e4m3(y) if IS_FP8 else round_half_even(y)
    tl.store(q_ptr + row * stride_qm + offs, y.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(scale_ptr + row, scale)


def _quantize(x: torch.Tensor, qdtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_last_dim_contiguous("x", x)
    m, k = x.shape
    if k > MAX_K:
        raise ValueError(f"x last dim {k} > {MAX_K} is not supported by this kernel")
    q = torch.empty((m, k), device=x.device, dtype=qdtype)
    scale = torch.empty((m, 1), device=x.device, dtype=torch.float32)
    if m and k:
        block_k = next_pow2(k)
        _quantize_rows_kernel[(m,)](
            x, q, scale, x.stride(0), q.stride(0),
            K=k, BLOCK_K=block_k, IS_FP8=qdtype == torch.float8_e4m3fn,
            QMAX=QUANT_KV_QMAX[qdtype], num_warps=min(16, max(1, block_k // 256)),
        )  # fmt: skip
    elif m:
        scale.zero_()
    return q, scale


def quantize_per_token_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] float -> (int8 [M, K], fp32 scale [M, 1]); scale = amax / 127, round half even."""
    return _quantize(x, torch.int8)


def quantize_per_token_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] float -> (float8_e4m3fn [M, K], fp32 scale [M, 1]); scale = amax / 448."""
    return _quantize(x, torch.float8_e4m3fn)

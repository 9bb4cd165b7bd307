"""Scaled quantized GEMMs: W8A8 int8 (int32 accumulate) and FP8 e4m3 (fp32 accumulate).

out[m, n] = (sum_k a[m, k] b[n, k]) * a_scale[m] * b_scale[n] (+ bias[n]). Both operands are
K-contiguous ("NT" GEMM, the layout of nn.Linear weights); the tile loop is the textbook
Triton matmul, the dequantization is a per-row/per-column epilogue so the inner loop runs
at the tensor cores' int8 / fp8 rate.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference.gemm import (
    check_out,
    check_scaled_gemm_args,
    fp8_scaled_gemm_ref,
    w8a8_int8_gemm_ref,
)

__all__ = ["fp8_scaled_gemm", "fp8_scaled_gemm_ref", "w8a8_int8_gemm", "w8a8_int8_gemm_ref"]


@triton.jit
def _scaled_mm_kernel(
    a_ptr, b_ptr, a_scale_ptr, b_scale_ptr, bias_ptr, out_ptr, M, N, K, stride_am, stride_ak,
    stride_bn, stride_bk, stride_om, stride_on,
    A_PER_ROW: tl.constexpr, B_PER_COL: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACC_INT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_n[None, :].to(tl.int64) * stride_bn + offs_k[:, None] * stride_bk
    if ACC_INT:
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.int32)  # exact for K < 2^31 / 127^2 = 133k
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k + k0 < K
        a = tl.load(a_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    y = acc.to(tl.float32)
    if A_PER_ROW:
        y = y * tl.load(a_scale_ptr + offs_m, mask=m_mask, other=0.0)[:, None]
    else:
        y = y * tl.load(a_scale_ptr)
    if B_PER_COL:
        y = y * tl.load(b_scale_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
    else:
        y = y * tl.load(b_scale_ptr)
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(
        out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :] * stride_on,
        y.to(out_ptr.dtype.element_ty),
        mask=m_mask[:, None] & n_mask[None, :],
    )


def _launch(a, b, a_scale, b_scale, out_dtype, bias, out, acc_int: bool) -> torch.Tensor:
    m, k = a.shape
    n = b.shape[0]
    check_out(out, m, n, out_dtype)
    if out is None:
        out = torch.empty((m, n), device=a.device, dtype=out_dtype)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.zero_() if bias is None else out.copy_(bias.expand(m, n))
    # Decode-sized M gets a 16-row tile (the tensor-core minimum); larger M gets square-ish
    # tiles. BLOCK_K = 64 keeps fp8's K >= 32 requirement and a 64-byte int8 row per load.
    block_m = 16 if m <= 16 else (64 if m <= 64 else 128)
    block_n = 64 if m <= 16 else 128
    block_k = 64
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _scaled_mm_kernel[grid](
        a, b, a_scale, b_scale, bias if bias is not None else a_scale, out, m, n, k, a.stride(0),
        a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        A_PER_ROW=a_scale.numel() > 1 or m == 1, B_PER_COL=b_scale.numel() > 1 or n == 1,
        HAS_BIAS=bias is not None, ACC_INT=acc_int, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_K=block_k, num_warps=4 if block_m <= 64 else 8, num_stages=3,
    )  # fmt: skip
    return out


def _flat_scales(a_scale: torch.Tensor, b_scale: torch.Tensor):
    # [M, 1] / [N, 1] / [N] / one element -> contiguous 1-D views the kernel indexes by row/col.
    return a_scale.reshape(-1).contiguous(), b_scale.reshape(-1).contiguous()


def w8a8_int8_gemm(
    a_int8: torch.Tensor,
    b_int8: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """a_int8 [M, K] (per-token quantized activations), b_int8 [N, K] (per-channel weights),
    a_scale fp32 [M, 1] (or one element), b_scale fp32 [N] / [N, 1] (or one element),
    bias [N] float or None -> [M, N] out_dtype (written to ``out`` if given).
    int32 accumulation, fp32 epilogue."""
    check_scaled_gemm_args(a_int8, b_int8, a_scale, b_scale, out_dtype, bias, torch.int8)
    a_s, b_s = _flat_scales(a_scale, b_scale)
    return _launch(a_int8, b_int8, a_s, b_s, out_dtype, bias, out, acc_int=True)


def fp8_scaled_gemm(
    a_fp8: torch.Tensor,
    b_fp8: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """a_fp8 [M, K] float8_e4m3fn, b_fp8 [N, K] float8_e4m3fn, a_scale fp32 [M, 1] (or one
    element), b_scale fp32 [N] / [N, 1] (or one element), bias [N] or None -> [M, N]
    out_dtype. fp32 accumulation (fp8 tensor cores on Hopper/Ada)."""
    check_scaled_gemm_args(a_fp8, b_fp8, a_scale, b_scale, out_dtype, bias, torch.float8_e4m3fn)
    a_s, b_s = _flat_scales(a_scale, b_scale)
    return _launch(a_fp8, b_fp8, a_s, b_s, out_dtype, bias, out, acc_int=False)

"""AWQ int4 weight-only GEMM: x [M, K] @ dequant(qweight) [K, N], AutoAWQ "GEMM" packing.

The int4 weight is dequantized tile by tile in registers ((q - zero) * scale, per group of
``group_size`` input rows), so HBM traffic for the weight is 0.5 byte/element, the win for
memory-bound decode. Packing: int32 qweight[k, j] holds output columns 8j..8j+7; column c of
the group sits in nibble (c // 2 + 4 * (c % 2)) (AutoAWQ order [0, 2, 4, 6, 1, 3, 5, 7]).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_utils import dot_precision
from .reference.gemm import awq_gemm_ref, check_awq_gemm_args, check_out
from .reference.quant import awq_dequantize_ref, awq_pack, awq_unpack

__all__ = ["awq_dequantize_ref", "awq_gemm", "awq_gemm_ref", "awq_pack", "awq_unpack"]


@triton.jit
def _awq_gemm_kernel(
    x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, out_ptr, M, N, K, stride_xm, stride_qwk,
    stride_qzg, stride_sg, stride_om,
    GROUP_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    # Each output column reads its packed int32 (shared by 8 columns: cached loads) and
    # shifts out its own nibble.
    shifts = ((offs_n % 8) // 2 + 4 * (offs_n % 2)) * 4
    packed_col = offs_n // 8
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    # BLOCK_K divides GROUP_SIZE (launcher), so a K tile lies inside one quantization group.
    for k0 in range(0, K, BLOCK_K):
        group = k0 // GROUP_SIZE
        z = (
            tl.load(qzeros_ptr + group * stride_qzg + packed_col, mask=n_mask, other=0) >> shifts
        ) & 0xF
        s = tl.load(scales_ptr + group * stride_sg + offs_n, mask=n_mask, other=0.0)
        rows = k0 + offs_k
        qw = tl.load(
            qweight_ptr + rows[:, None].to(tl.int64) * stride_qwk + packed_col[None, :],
            mask=n_mask[None, :],
            other=0,
        )  # K % BLOCK_K == 0: no K mask needed
        w = (((qw >> shifts[None, :]) & 0xF) - z[None, :]).to(tl.float32) * s.to(tl.float32)[
            None, :
        ]
        x = tl.load(
            x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + rows[None, :],
            mask=m_mask[:, None],
            other=0.0,
        )
        # Round the weight to the activation dtype (as the reference does), dot in fp32 acc.
        acc = tl.dot(x, w.to(x_ptr.dtype.element_ty), acc, input_precision=DOT_PRECISION)
    tl.store(
        out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=m_mask[:, None] & n_mask[None, :],
    )


def awq_gemm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [M, K] fp16/bf16/fp32 (same dtype as scales); qweight int32 [K, N // 8];
    qzeros int32 [K // G, N // 8]; scales [K // G, N]; group_size G (multiple of 16)
    -> [M, N] in x's dtype (into ``out`` if given), fp32 accumulation."""
    m, n, k = check_awq_gemm_args(x, qweight, qzeros, scales, group_size)
    if group_size % 16:
        raise ValueError(
            f"group_size must be a multiple of 16 for the Triton kernel, got {group_size}"
        )
    for name, t in (("x", x), ("qweight", qweight), ("qzeros", qzeros), ("scales", scales)):
        if t.numel() and t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dim, got strides {t.stride()}")
    check_out(out, m, n, x.dtype)
    if out is None:
        out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    if m == 0 or n == 0:
        return out
    block_k = 64 if group_size % 64 == 0 else (32 if group_size % 32 == 0 else 16)
    block_m = 16 if m <= 16 else 64
    block_n = 64 if m <= 16 else 128
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _awq_gemm_kernel[grid](
        x, qweight, qzeros, scales, out, m, n, k, x.stride(0), qweight.stride(0), qzeros.stride(0),
        scales.stride(0), out.stride(0), GROUP_SIZE=group_size,
        DOT_PRECISION=dot_precision(x.dtype), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=4, num_stages=3,
    )  # fmt: skip
    return out

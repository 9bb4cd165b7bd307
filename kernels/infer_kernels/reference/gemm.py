"""Quantized GEMMs (torch references): W8A8 int8, FP8 (e4m3) with scales, AWQ int4.

Scaled GEMM contract: out[m, n] = (sum_k a[m, k] * b[n, k]) * a_scale[m] * b_scale[n] + bias[n],
accumulated exactly (int32) for int8 and in fp32 for fp8, epilogue in fp32, one final rounding
to ``out_dtype``. Scales may also be per-tensor (one element).
"""

from __future__ import annotations

import torch

from .._checks import FLOAT_DTYPES, check_same_device, check_tensor
from .quant import awq_dequantize_ref, check_awq_args


def check_scaled_gemm_args(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None,
    qdtype: torch.dtype,
) -> tuple[int, int, int]:
    """Validate; return (M, N, K)."""
    a_name, b_name = ("a_int8", "b_int8") if qdtype == torch.int8 else ("a_fp8", "b_fp8")
    check_tensor(a_name, a, ndim=2, dtypes=(qdtype,))
    check_tensor(b_name, b, ndim=2, dtypes=(qdtype,))
    m, k = a.shape
    n = b.shape[0]
    if b.shape[1] != k:
        raise ValueError(
            f"{b_name} must be [N, K] with K={k} ({a_name} is [M, K]), got {tuple(b.shape)}"
        )
    check_tensor("a_scale", a_scale, dtypes=(torch.float32,))
    check_tensor("b_scale", b_scale, dtypes=(torch.float32,))
    if a_scale.numel() not in (1, m) or (a_scale.dim() == 2 and a_scale.shape[1] != 1):
        raise ValueError(
            f"a_scale must be [M, 1] (M={m}) or one element, got {tuple(a_scale.shape)}"
        )
    if b_scale.numel() not in (1, n) or (b_scale.dim() == 2 and b_scale.shape[1] != 1):
        raise ValueError(
            f"b_scale must be [N] or [N, 1] (N={n}) or one element, got {tuple(b_scale.shape)}"
        )
    if out_dtype not in FLOAT_DTYPES:
        raise ValueError(f"out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    if bias is not None:
        check_tensor("bias", bias, shape=(n,), dtypes=FLOAT_DTYPES)
    check_same_device(a=a, b=b, a_scale=a_scale, b_scale=b_scale, bias=bias)
    return m, n, k


def check_out(out: torch.Tensor | None, m: int, n: int, dtype: torch.dtype) -> None:
    if out is not None:
        check_tensor("out", out, shape=(m, n), dtypes=(dtype,))
        if n > 1 and out.stride(1) != 1:
            raise ValueError(f"out must have a contiguous last dim, got strides {out.stride()}")


def _epilogue(acc, a_scale, b_scale, out_dtype, bias, out) -> torch.Tensor:
    y = acc * a_scale.reshape(-1, 1) * b_scale.reshape(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype) if out is None else out.copy_(y)


def _int8_matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int32 ``a @ b.T``; ``torch._int_mm`` where the backend accepts the shape."""
    try:
        return torch._int_mm(a, b.t())
    except RuntimeError:
        # e.g. CUDA _int_mm needs M > 16 and K, N multiples of 8. fp64 is exact for K < 2^38.
        return (a.double() @ b.double().t()).to(torch.int32)


def w8a8_int8_gemm_ref(
    a_int8: torch.Tensor,
    b_int8: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """a_int8 [M, K], b_int8 [N, K], a_scale fp32 [M, 1], b_scale fp32 [N] -> [M, N] out_dtype.

    ``out`` (optional, [M, N] out_dtype) receives the result.
    """
    m, n, _ = check_scaled_gemm_args(a_int8, b_int8, a_scale, b_scale, out_dtype, bias, torch.int8)
    check_out(out, m, n, out_dtype)
    return _epilogue(
        _int8_matmul_nt(a_int8, b_int8).float(), a_scale, b_scale, out_dtype, bias, out
    )


def fp8_scaled_gemm_ref(
    a_fp8: torch.Tensor,
    b_fp8: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """a_fp8 [M, K], b_fp8 [N, K] float8_e4m3fn, fp32 scales -> [M, N] out_dtype (fp32 acc)."""
    m, n, _ = check_scaled_gemm_args(
        a_fp8, b_fp8, a_scale, b_scale, out_dtype, bias, torch.float8_e4m3fn
    )
    check_out(out, m, n, out_dtype)
    # Every e4m3 value is exact in fp32, so this is dequantize + fp32 matmul.
    return _epilogue(a_fp8.float() @ b_fp8.float().t(), a_scale, b_scale, out_dtype, bias, out)


def check_awq_gemm_args(x, qweight, qzeros, scales, group_size) -> tuple[int, int, int]:
    """Validate; return (M, N, K)."""
    k, n = check_awq_args(qweight, qzeros, scales, group_size)
    check_tensor("x", x, ndim=2, dtypes=(scales.dtype,))
    if x.shape[1] != k:
        raise ValueError(f"x must be [M, K] with K={k} (from qweight), got {tuple(x.shape)}")
    check_same_device(x=x, qweight=qweight, qzeros=qzeros, scales=scales)
    return x.shape[0], n, k


def awq_gemm_ref(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [M, K] (dtype of scales) @ dequant(AutoAWQ int4 weight) [K, N] -> [M, N], fp32 math."""
    m, n, _ = check_awq_gemm_args(x, qweight, qzeros, scales, group_size)
    check_out(out, m, n, x.dtype)
    w = awq_dequantize_ref(qweight, qzeros, scales, group_size)  # rounded to scales dtype
    y = x.float() @ w.float()
    return y.to(x.dtype) if out is None else out.copy_(y)

"""Symmetric per-row quantization and AutoAWQ int4 packing (torch references).

Quantization contract (shared by the KV cache and the W8A8 / FP8 GEMM paths):
    amax  = max |x| over the last dim (computed in fp32)
    scale = amax / QMAX            (QMAX = 127 for int8, 448 for float8_e4m3fn)
    q     = round_half_even(x / scale) clamped to [-QMAX, QMAX]   (int8)
          = cast_rtne(clamp(x / scale, -448, 448))                 (fp8)
    x ~= q * scale
A row of zeros gets scale 0 and codes 0 (we divide by 1 instead of 0 so no NaN appears).
"""

from __future__ import annotations

import torch

from .._checks import FLOAT_DTYPES, QUANT_KV_QMAX, check_tensor

# AutoAWQ's GEMM packing puts output column order[i] of each group of 8 into nibble i.
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
# ...so column c lives in nibble AWQ_REVERSE_ORDER[c] (= c // 2 + 4 * (c % 2)).
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)


def quantize_last_dim(x: torch.Tensor, qdtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x [..., D]`` per row; return ``(q [..., D] qdtype, scale fp32 [...])``."""
    if qdtype not in QUANT_KV_QMAX:
        raise ValueError(f"qdtype must be int8 or float8_e4m3fn, got {qdtype}")
    qmax = QUANT_KV_QMAX[qdtype]
    xf = x.float()
    scale = xf.abs().amax(dim=-1) / qmax
    y = xf / torch.where(scale > 0, scale, torch.ones_like(scale)).unsqueeze(-1)
    if qdtype == torch.int8:
        q = y.round().clamp(-qmax, qmax).to(torch.int8)  # torch.round is half-to-even
    else:
        q = y.clamp(-qmax, qmax).to(qdtype)  # the cast rounds to nearest even
    return q, scale


def quantize_per_token_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [M, K]`` float -> ``(x_int8 [M, K], scale fp32 [M, 1])`` with ``x ~= x_int8 * scale``.

    Also used per output channel for weights: ``quantize_per_token_int8(w [N, K])``.
    """
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    q, scale = quantize_last_dim(x, torch.int8)
    return q, scale.unsqueeze(-1)


def quantize_per_token_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [M, K]`` float -> ``(x_fp8 [M, K] float8_e4m3fn, scale fp32 [M, 1])``."""
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    q, scale = quantize_last_dim(x, torch.float8_e4m3fn)
    return q, scale.unsqueeze(-1)


# Registry names: the torch implementation of op X is X_ref.
quantize_per_token_int8_ref = quantize_per_token_int8
quantize_per_token_fp8_ref = quantize_per_token_fp8


def awq_pack(intweight: torch.Tensor) -> torch.Tensor:
    """Pack int4 codes ``[R, N]`` (values 0..15, any int dtype) into int32 ``[R, N // 8]``.

    AutoAWQ GEMM layout: int32 column j, nibble i (bits 4i..4i+3) holds column
    ``8 * j + AWQ_PACK_ORDER[i]``. Used for both ``qweight`` (R = K) and ``qzeros`` (R = K // G).
    """
    check_tensor("intweight", intweight, ndim=2)
    rows, n = intweight.shape
    if n % 8:
        raise ValueError(f"intweight last dim must be a multiple of 8, got {n}")
    if intweight.numel() and (intweight.min() < 0 or intweight.max() > 15):
        raise ValueError("intweight values must be in [0, 15]")
    w = intweight.to(torch.int64).view(rows, n // 8, 8)[:, :, list(AWQ_PACK_ORDER)]
    shifts = torch.arange(0, 32, 4, device=w.device, dtype=torch.int64)
    packed = (w << shifts).sum(dim=-1)  # disjoint nibbles: sum == bitwise or
    # Reinterpret the low 32 bits as signed int32 (nibble 7 may set the sign bit).
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)
    return packed.to(torch.int32)


def awq_unpack(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`awq_pack`: int32 ``[R, N // 8]`` -> int32 codes ``[R, N]`` in 0..15."""
    check_tensor("packed", packed, ndim=2, dtypes=(torch.int32,))
    rows, n8 = packed.shape
    shifts = 4 * torch.tensor(AWQ_REVERSE_ORDER, device=packed.device, dtype=torch.int32)
    codes = (packed.unsqueeze(-1) >> shifts) & 0xF  # arithmetic shift, then mask: sign-safe
    return codes.reshape(rows, n8 * 8)


def awq_dequantize_ref(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int
) -> torch.Tensor:
    """Dequantize AutoAWQ weights to ``[K, N]`` in ``scales.dtype``: ``(q - z) * s`` per group.

    qweight int32 [K, N // 8]; qzeros int32 [K // G, N // 8]; scales [K // G, N] float.
    """
    check_awq_args(qweight, qzeros, scales, group_size)
    q = awq_unpack(qweight)
    z = awq_unpack(qzeros).repeat_interleave(group_size, dim=0)
    s = scales.float().repeat_interleave(group_size, dim=0)
    return ((q - z).float() * s).to(scales.dtype)


def check_awq_args(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int
) -> tuple[int, int]:
    """Validate AWQ tensors; return ``(K, N)``."""
    check_tensor("qweight", qweight, ndim=2, dtypes=(torch.int32,))
    k, n = qweight.shape[0], qweight.shape[1] * 8
    if not isinstance(group_size, int) or group_size <= 0 or k % group_size:
        raise ValueError(f"group_size must be a positive int dividing K={k}, got {group_size}")
    groups = k // group_size
    check_tensor("qzeros", qzeros, shape=(groups, n // 8), dtypes=(torch.int32,))
    check_tensor("scales", scales, shape=(groups, n), dtypes=FLOAT_DTYPES)
    return k, n

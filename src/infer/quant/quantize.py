"""Quantize / dequantize primitives shared by the methods (pure torch, any device).

Conventions: weights are ``w [N, K]`` (nn.Linear layout: N outputs, K inputs).
  int8 / fp8 per output channel, symmetric: ``w ~= q * scale[n]`` with scale = amax / QMAX
      (QMAX 127 / 448), the contract of ``infer_kernels.reference.quant``.
  int4 group-wise, asymmetric (AutoAWQ's): per group of G inputs, ``scale = (max - min) / 15``
      (rounded to fp16, as AutoAWQ checkpoints store it), ``zero = clamp(-round(min / scale),
      0, 15)``, ``q = clamp(round(w / scale) + zero, 0, 15)``, ``w ~= (q - zero) * scale``.
"""

from __future__ import annotations

import torch
from infer_kernels.reference import awq_pack, awq_unpack, quantize_last_dim

FP8 = torch.float8_e4m3fn


def int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w [N, K]`` -> (int8 codes [N, K], fp32 scale [N])."""
    return quantize_last_dim(w, torch.int8)


def fp8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w [N, K]`` -> (float8_e4m3fn codes [N, K], fp32 scale [N])."""
    return quantize_last_dim(w, FP8)


def fp8_codes(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``w [N, K]`` with GIVEN per-row scales ``[N]`` -> float8_e4m3fn codes [N, K]
    (round to nearest even, clamped to +-448; a zero scale gives zero codes)."""
    s = scale.float().to(w.device)
    s = torch.where(s > 0, s, torch.ones_like(s))
    return (w.float() / s[:, None]).clamp(-448.0, 448.0).to(FP8)


def fake_quant_per_token(x: torch.Tensor, qdtype: torch.dtype) -> torch.Tensor:
    """Round ``x [T, K]`` through dynamic per-token int8 / fp8 and back (fp32 result): what a
    W8A8 / FP8 GEMM sees of its activations."""
    q, s = quantize_last_dim(x, qdtype)
    return q.float() * s.unsqueeze(-1)


def int4_groups(
    w: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest asymmetric int4 per group of ``group_size`` inputs.

    Returns (codes uint8 [N, K] in 0..15, scales fp32 [N, K/G] (fp16-representable),
    zeros uint8 [N, K/G] in 0..15).
    """
    n, k = w.shape
    if k % group_size:
        raise ValueError(
            f"quant.group_size={group_size} must divide every layer's input size; {k} is not "
            "a multiple (SmolLM2's 576-wide layers need 64 or 32)"
        )
    g = w.float().reshape(n, k // group_size, group_size)
    wmax, wmin = g.amax(-1), g.amin(-1)
    scales = ((wmax - wmin).clamp(min=1e-5) / 15).half().float()
    zeros = (-torch.round(wmin / scales)).clamp(0, 15)
    q = (torch.round(g / scales.unsqueeze(-1)) + zeros.unsqueeze(-1)).clamp(0, 15)
    return q.reshape(n, k).to(torch.uint8), scales, zeros.to(torch.uint8)


def int4_dequant(
    codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int
) -> torch.Tensor:
    """Inverse of :func:`int4_groups`: fp32 ``[N, K]``."""
    n, k = codes.shape
    q = codes.float().reshape(n, k // group_size, group_size)
    return ((q - zeros.float().unsqueeze(-1)) * scales.unsqueeze(-1)).reshape(n, k)


def int4_fake_quant(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """``w`` rounded through :func:`int4_groups` (same shape, fp32)."""
    return int4_dequant(*int4_groups(w, group_size), group_size)


# --- CPU kernel layout: 2 codes per byte, per 32-wide K chunk (see csrc/quant_linear_cpu.cpp) --
def pack_int4_cpu(codes: torch.Tensor) -> torch.Tensor:
    """codes [N, K] (0..15, K % 32 == 0) -> uint8 [N, K/2]: byte 16c + i of a row holds
    k = 32c + i (low nibble) and k = 32c + 16 + i (high nibble)."""
    n, k = codes.shape
    c = codes.to(torch.uint8).reshape(n, k // 32, 2, 16)
    return (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(n, k // 2).contiguous()


def unpack_int4_cpu(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4_cpu`: uint8 [N, K/2] -> codes uint8 [N, K]."""
    n, half = packed.shape
    b = packed.reshape(n, half // 16, 1, 16)
    return torch.cat([b & 0xF, b >> 4], dim=2).reshape(n, half * 2)


# --- AutoAWQ "GEMM" layout: qweight int32 [K, N/8], qzeros int32 [K/G, N/8], scales [K/G, N] ---
def to_autoawq(
    codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, dtype: torch.dtype = torch.float16
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes [N, K], scales [N, K/G], zeros [N, K/G]) -> (qweight, qzeros, scales) in AutoAWQ's
    GEMM packing (nibble order 0,2,4,6,1,3,5,7 per 8 output columns)."""
    return (
        awq_pack(codes.t().contiguous()),
        awq_pack(zeros.t().contiguous()),
        scales.t().contiguous().to(dtype),
    )


def from_autoawq(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`to_autoawq`: (codes uint8 [N, K], scales fp32 [N, K/G], zeros uint8
    [N, K/G])."""
    codes = awq_unpack(qweight).t().contiguous().to(torch.uint8)
    zeros = awq_unpack(qzeros).t().contiguous().to(torch.uint8)
    return codes, scales.float().t().contiguous(), zeros

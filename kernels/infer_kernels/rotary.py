"""Rotary position embedding (neox / HF-Llama "rotate half" layout), in place on q and k."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_utils import next_pow2
from .reference.rotary import check_rotary_args, rotary_embedding_ref

__all__ = ["rotary_embedding", "rotary_embedding_ref"]


@triton.jit
def _rotate_heads(
    x_ptr, row, stride_t, stride_h, cos, sin,
    NUM_HEADS: tl.constexpr, BLOCK_HEADS: tl.constexpr, HALF: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):  # fmt: skip
    offs_h = tl.arange(0, BLOCK_HEADS)
    offs_r = tl.arange(0, BLOCK_HALF)
    mask = (offs_h[:, None] < NUM_HEADS) & (offs_r[None, :] < HALF)
    p1 = x_ptr + row * stride_t + offs_h[:, None] * stride_h + offs_r[None, :]
    p2 = p1 + HALF
    x1 = tl.load(p1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(p2, mask=mask, other=0.0).to(tl.float32)
    # Both halves are loaded before either store: the update is in place.
    tl.store(p1, (x1 * cos - x2 * sin).to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(p2, (x2 * cos + x1 * sin).to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    positions_ptr, q_ptr, k_ptr, cos_sin_ptr, stride_qt, stride_qh, stride_kt, stride_kh,
    stride_cp,
    NUM_Q_HEADS: tl.constexpr, NUM_K_HEADS: tl.constexpr, BLOCK_QH: tl.constexpr,
    BLOCK_KH: tl.constexpr, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr,
):  # fmt: skip
    # One program per token: cos/sin are loaded once and used for every q and k head.
    row = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + row).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_HALF)
    r_mask = offs_r < HALF
    cos = tl.load(cos_sin_ptr + pos * stride_cp + offs_r, mask=r_mask, other=0.0).to(tl.float32)
    sin = tl.load(cos_sin_ptr + pos * stride_cp + HALF + offs_r, mask=r_mask, other=0.0).to(
        tl.float32
    )
    _rotate_heads(
        q_ptr,
        row,
        stride_qt,
        stride_qh,
        cos[None, :],
        sin[None, :],
        NUM_Q_HEADS,
        BLOCK_QH,
        HALF,
        BLOCK_HALF,
    )
    _rotate_heads(
        k_ptr,
        row,
        stride_kt,
        stride_kh,
        cos[None, :],
        sin[None, :],
        NUM_K_HEADS,
        BLOCK_KH,
        HALF,
        BLOCK_HALF,
    )


def rotary_embedding(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate the first rot_dim dims of q [T, H, D] and k [T, Hkv, D] in place.

    positions int64/int32 [T] (< max_position, not checked: that would sync); cos_sin_cache
    [max_position, rot_dim] float, cos first half, sin second half (llama3 / yarn scaling is
    baked into it). q/k may be strided views (e.g. slices of a fused qkv output) as long as
    the last dim is contiguous. Returns (q, k), the same tensors.
    """
    rot_dim = check_rotary_args(positions, q, k, cos_sin_cache)
    num_tokens = positions.shape[0]
    if num_tokens == 0:
        return q, k
    half = rot_dim // 2
    _rotary_kernel[(num_tokens,)](
        positions, q, k, cos_sin_cache, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        cos_sin_cache.stride(0), NUM_Q_HEADS=q.shape[1], NUM_K_HEADS=k.shape[1],
        BLOCK_QH=next_pow2(q.shape[1]), BLOCK_KH=next_pow2(k.shape[1]), HALF=half,
        BLOCK_HALF=next_pow2(half),
    )  # fmt: skip
    return q, k

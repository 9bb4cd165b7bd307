"""Write new tokens' K/V into the paged cache, quantizing when the cache is int8/fp8."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import QUANT_KV_QMAX, check_last_dim_contiguous
from ._triton_utils import next_pow2, round_half_even, round_to_e4m3
from .reference.kvcache import check_store_args, store_kvcache_ref

__all__ = ["store_kvcache", "store_kvcache_ref"]

# QUANT codes (constexpr): 0 = plain cast, 1 = int8, 2 = fp8 e4m3.
_QUANT_CODE = {torch.int8: 1, torch.float8_e4m3fn: 2}


@triton.jit
def _store_one(
    src_ptr, cache_ptr, scale_ptr, token, block, offset, stride_src_t, stride_src_h,
    stride_cache_b, stride_cache_t, stride_cache_h, stride_scale_b, stride_scale_t, stride_scale_h,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr, QUANT: tl.constexpr, QMAX: tl.constexpr,
):  # fmt: skip
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h[:, None] < NUM_KV_HEADS) & (offs_d[None, :] < HEAD_DIM)
    x = tl.load(
        src_ptr + token * stride_src_t + offs_h[:, None] * stride_src_h + offs_d[None, :],
        mask=mask,
        other=0.0,
    )
    dst = (
        cache_ptr
        + block * stride_cache_b
        + offset * stride_cache_t
        + offs_h[:, None] * stride_cache_h
        + offs_d[None, :]
    )
    if QUANT == 0:
        tl.store(dst, x.to(cache_ptr.dtype.element_ty), mask=mask)
    else:
        x = x.to(tl.float32)
        scale = tl.max(tl.abs(x), axis=1) / QMAX  # [BLOCK_H], one per (token, head)
        y = x / tl.where(scale > 0, scale, 1.0)[:, None]  # all-zero row: codes 0, scale 0
        y = tl.minimum(tl.maximum(y, -QMAX), QMAX)
        if QUANT == 1:
            y = round_half_even(y)
        else:
            y = round_to_e4m3(y)
        tl.store(dst, y.to(cache_ptr.dtype.element_ty), mask=mask)
        tl.store(
            scale_ptr + block * stride_scale_b + offset * stride_scale_t + offs_h * stride_scale_h,
            scale,
            mask=offs_h < NUM_KV_HEADS,
        )


@triton.jit
def _store_kvcache_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr, slot_mapping_ptr, stride_kt,
    stride_kh, stride_vt, stride_vh, stride_kcb, stride_kct, stride_kch, stride_vcb, stride_vct,
    stride_vch, stride_ksb, stride_kst, stride_ksh, stride_vsb, stride_vst, stride_vsh,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, QUANT: tl.constexpr, QMAX: tl.constexpr,
):  # fmt: skip
    # One program per token: all heads of K and V (a few hundred bytes each).
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)  # int64: slot * strides can pass 2^31
    if slot < 0:  # padding token
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    _store_one(
        k_ptr,
        k_cache_ptr,
        k_scale_ptr,
        token,
        block,
        offset,
        stride_kt,
        stride_kh,
        stride_kcb,
        stride_kct,
        stride_kch,
        stride_ksb,
        stride_kst,
        stride_ksh,
        NUM_KV_HEADS,
        HEAD_DIM,
        BLOCK_H,
        BLOCK_D,
        QUANT,
        QMAX,
    )
    _store_one(
        v_ptr,
        v_cache_ptr,
        v_scale_ptr,
        token,
        block,
        offset,
        stride_vt,
        stride_vh,
        stride_vcb,
        stride_vct,
        stride_vch,
        stride_vsb,
        stride_vst,
        stride_vsh,
        NUM_KV_HEADS,
        HEAD_DIM,
        BLOCK_H,
        BLOCK_D,
        QUANT,
        QMAX,
    )


def store_kvcache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Write ``k, v [T, Hkv, D]`` into ``k_cache, v_cache [num_blocks, block_size, Hkv, D]``.

    ``slot_mapping`` int64/int32 [T], slot = block * block_size + offset, < 0 = skip. For an
    int8 / float8_e4m3fn cache, also writes fp32 ``k_scale, v_scale [num_blocks, block_size, Hkv]``
    (symmetric, per token per head; see ``reference.quant``). In place; returns None.
    """
    quantized = check_store_args(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    check_last_dim_contiguous("k", k)
    check_last_dim_contiguous("v", v)
    num_tokens = k.shape[0]
    if num_tokens == 0:
        return
    _, block_size, kv_heads, head_dim = k_cache.shape
    if not quantized:  # placeholders: the QUANT == 0 path never touches them
        k_scale = v_scale = torch.empty((1, 1, 1), device=k.device, dtype=torch.float32)
    _store_kvcache_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, k_scale, v_scale, slot_mapping, k.stride(0), k.stride(1),
        v.stride(0), v.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), k_scale.stride(0),
        k_scale.stride(1), k_scale.stride(2), v_scale.stride(0), v_scale.stride(1),
        v_scale.stride(2), NUM_KV_HEADS=kv_heads, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_H=next_pow2(kv_heads), BLOCK_D=next_pow2(head_dim),
        QUANT=_QUANT_CODE.get(k_cache.dtype, 0), QMAX=QUANT_KV_QMAX.get(k_cache.dtype, 1.0),
    )  # fmt: skip

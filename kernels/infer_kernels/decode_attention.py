"""Paged decode attention (one query token per sequence), GQA-aware, optional split-K.

Kernel 1 (``_decode_partition_kernel``), grid (num_seqs, num_kv_heads, num_splits): one program
reads each K/V page of its context slice ONCE for all GROUP = H / Hkv query heads that share
the KV head (the GROUP heads form the M side of ``tl.dot``, padded to >= 16 for tensor cores)
and runs an online softmax over pages. With one split it normalizes and writes ``out``
directly; otherwise it writes the unnormalized partial (max, sum, acc) of its slice.
Kernel 2 (``_decode_reduce_kernel``), grid (num_seqs, H): rescales the partials to a common
max and combines them (flash-decoding). Split-K keeps the GPU busy when num_seqs * Hkv is
small and contexts are long.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import is_pow2
from ._triton_utils import dot_precision, next_pow2
from .reference.attention import check_decode_args, paged_decode_attention_ref

__all__ = ["paged_decode_attention", "paged_decode_attention_ref"]

LOG2E = 1.4426950408889634  # log2(e): softmax via exp2
# Initial running max: finite, so exp2(m_old - m_new) is 0 (not NaN) when a row has seen no
# key yet; real scores are far above it.
NEG_BIG = tl.constexpr(-1.0e30)


@triton.jit
def _decode_partition_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr, block_tables_ptr, context_lens_ptr,
    out_ptr, part_max_ptr, part_sum_ptr, part_acc_ptr,
    qk_scale,  # softmax scale * log2(e): the kernel uses exp2
    stride_qs, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_sb, stride_st, stride_sh,  # shared by k_scale and v_scale (same shape, contiguous)
    stride_bts, stride_os, stride_oh,
    NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, NUM_SPLITS: tl.constexpr,
    KV_QUANT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    ctx = tl.load(context_lens_ptr + seq)
    num_pages = tl.cdiv(ctx, BLOCK_SIZE)
    pages_per_split = tl.cdiv(num_pages, NUM_SPLITS)
    page_lo = split * pages_per_split
    page_hi = tl.minimum(page_lo + pages_per_split, num_pages)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_SIZE)
    heads = kv_head * GROUP + offs_g
    g_mask = offs_g < GROUP
    d_mask = offs_d < HEAD_DIM
    q = tl.load(
        q_ptr + seq * stride_qs + heads[:, None] * stride_qh + offs_d[None, :],
        mask=g_mask[:, None] & d_mask[None, :],
        other=0.0,
    )

    m_i = tl.full([BLOCK_G], NEG_BIG, tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for page in range(page_lo, page_hi):
        block = tl.load(block_tables_ptr + seq * stride_bts + page).to(tl.int64)
        t_mask = page * BLOCK_SIZE + offs_t < ctx
        kv_mask = t_mask[:, None] & d_mask[None, :]
        k = tl.load(
            k_cache_ptr
            + block * stride_kb
            + offs_t[:, None] * stride_kt
            + kv_head * stride_kh
            + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        # int8 / fp8 codes are exact in fp16/bf16/fp32: dot on codes, scale the columns after.
        s = tl.dot(
            q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION
        )  # [BLOCK_G, BLOCK_SIZE]
        if KV_QUANT:
            s_off = block * stride_sb + offs_t * stride_st + kv_head * stride_sh
            s = s * tl.load(k_scale_ptr + s_off, mask=t_mask, other=0.0)[None, :]
        s = tl.where(t_mask[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            v_cache_ptr
            + block * stride_vb
            + offs_t[:, None] * stride_vt
            + kv_head * stride_vh
            + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        if KV_QUANT:  # fold the per-token V scale into the probabilities
            p = p * tl.load(v_scale_ptr + s_off, mask=t_mask, other=0.0)[None, :]
        acc = acc * alpha[:, None] + tl.dot(
            p.to(q.dtype), v.to(q.dtype), input_precision=DOT_PRECISION
        )
        m_i = m_new

    gd_mask = g_mask[:, None] & d_mask[None, :]
    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # context 0 -> zeros
        tl.store(
            out_ptr + seq * stride_os + heads[:, None] * stride_oh + offs_d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=gd_mask,
        )
    else:
        # Partials are contiguous fp32: max/sum [S, H, NUM_SPLITS], acc [S, H, NUM_SPLITS, D].
        row = (seq * NUM_HEADS + heads) * NUM_SPLITS + split
        tl.store(part_max_ptr + row, m_i, mask=g_mask)
        tl.store(part_sum_ptr + row, l_i, mask=g_mask)
        tl.store(part_acc_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=gd_mask)


@triton.jit
def _decode_reduce_kernel(
    out_ptr, part_max_ptr, part_sum_ptr, part_acc_ptr, stride_os, stride_oh,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr, BLOCK_SPLITS: tl.constexpr,
):  # fmt: skip
    seq = tl.program_id(0)
    head = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_SPLITS)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < NUM_SPLITS
    row = (seq * NUM_HEADS + head) * NUM_SPLITS + offs_s
    # Empty splits carry max = NEG_BIG and sum = acc = 0, so their weight underflows to 0.
    m = tl.load(part_max_ptr + row, mask=s_mask, other=NEG_BIG)
    l = tl.load(part_sum_ptr + row, mask=s_mask, other=0.0)
    acc = tl.load(
        part_acc_ptr + row[:, None] * HEAD_DIM + offs_d[None, :],
        mask=s_mask[:, None] & (offs_d[None, :] < HEAD_DIM),
        other=0.0,
    )
    w = tl.exp2(m - tl.max(m, axis=0))
    denom = tl.sum(l * w, axis=0)
    out = tl.sum(acc * w[:, None], axis=0) / tl.where(denom > 0, denom, 1.0)
    tl.store(
        out_ptr + seq * stride_os + head * stride_oh + offs_d,
        out.to(out_ptr.dtype.element_ty),
        mask=offs_d < HEAD_DIM,
    )


def default_num_splits(num_seqs: int, num_kv_heads: int, max_context: int) -> int:
    """Split when contexts are long and there are too few (seq, kv_head) programs to fill a GPU.

    ``max_context`` is an upper bound (block table width * block_size) so no device sync is
    needed. Aim for >= ~256 programs with >= 512 tokens each, at most 16 splits.
    """
    if max_context <= 1024:
        return 1
    by_length = max_context // 512
    by_occupancy = max(1, 256 // max(1, num_seqs * num_kv_heads))
    return int(max(1, min(16, by_length, by_occupancy)))


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode attention over a paged KV cache.

    q [S, H, D] fp32/fp16/bf16; k_cache/v_cache [num_blocks, block_size, Hkv, D] (float, or
    int8 / float8_e4m3fn with fp32 k_scale/v_scale [num_blocks, block_size, Hkv]);
    block_tables int32 [S, max_blocks]; context_lens int32 [S] (includes the current token,
    0 gives zeros); scale = softmax scale. num_splits: split-K factor (None = heuristic,
    1 = single pass). Returns out [S, H, D] in q's dtype (fp32 accumulation).
    """
    quantized = check_decode_args(
        q, k_cache, v_cache, block_tables, context_lens, scale, k_scale, v_scale, num_splits, out
    )
    num_seqs, num_heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    if not is_pow2(block_size) or block_size < 16:
        raise ValueError(f"block_size must be a power of two >= 16 (tl.dot tile), got {block_size}")
    if out is None:
        out = torch.empty_like(q)
    if num_seqs == 0:
        return out
    if num_splits is None:
        num_splits = default_num_splits(num_seqs, kv_heads, block_tables.shape[1] * block_size)
    group = num_heads // kv_heads
    if quantized:
        if not (k_scale.is_contiguous() and v_scale.is_contiguous()):
            raise ValueError("k_scale and v_scale must be contiguous")
        scale_strides = k_scale.stride()
    else:
        k_scale = v_scale = q  # placeholders: KV_QUANT=False never reads them
        scale_strides = (0, 0, 0)
    if num_splits > 1:
        part_max = torch.empty(
            (num_seqs, num_heads, num_splits), device=q.device, dtype=torch.float32
        )
        part_sum = torch.empty_like(part_max)
        part_acc = torch.empty(
            (num_seqs, num_heads, num_splits, head_dim), device=q.device, dtype=torch.float32
        )
    else:
        part_max = part_sum = part_acc = out  # unused
    block_d = next_pow2(head_dim)
    _decode_partition_kernel[(num_seqs, kv_heads, num_splits)](
        q, k_cache, v_cache, k_scale, v_scale, block_tables, context_lens, out, part_max, part_sum,
        part_acc, float(scale) * LOG2E, q.stride(0), q.stride(1), k_cache.stride(0),
        k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), *scale_strides, block_tables.stride(0), out.stride(0), out.stride(1),
        NUM_HEADS=num_heads, GROUP=group, BLOCK_G=max(16, next_pow2(group)), HEAD_DIM=head_dim,
        BLOCK_D=block_d, BLOCK_SIZE=block_size, NUM_SPLITS=num_splits, KV_QUANT=quantized,
        DOT_PRECISION=dot_precision(q.dtype),
    )  # fmt: skip
    if num_splits > 1:
        _decode_reduce_kernel[(num_seqs, num_heads)](
            out, part_max, part_sum, part_acc, out.stride(0), out.stride(1), NUM_HEADS=num_heads,
            HEAD_DIM=head_dim, BLOCK_D=block_d, NUM_SPLITS=num_splits,
            BLOCK_SPLITS=next_pow2(num_splits),
        )  # fmt: skip
    return out

"""Paged prefill / extend attention (FlashAttention-style), causal, GQA-aware.

The new tokens' K/V are already in the paged cache, so a sequence with a cached prefix
(prefix caching, chunked prefill) and a fresh prompt are the same case: its n queries are
its last n positions and read keys 0..p through the block table.

Grid (num_q_tiles_bound, num_kv_heads). Sequences are packed, so a program finds its
(sequence, q-tile) by binary search over ``query_start_loc[i] // BLOCK_Q + i`` (the first
tile index of sequence i); the bound ``total_q // BLOCK_Q + num_seqs`` needs no device sync.
Rows of the M tile are (token, head-in-group) pairs: the GROUP query heads that share a KV
head reuse every K/V page load, as in the decode kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import is_pow2
from ._triton_utils import dot_precision, next_pow2
from .reference.attention import check_prefill_args, paged_prefill_attention_ref

__all__ = ["paged_prefill_attention", "paged_prefill_attention_ref"]

LOG2E = 1.4426950408889634
NEG_BIG = tl.constexpr(-1.0e30)  # finite initial max: no NaN from exp2(-inf - -inf)
BLOCK_M_TARGET = 64  # rows per program = BLOCK_Q tokens * BLOCK_G heads


@triton.jit
def _find_seq(query_start_loc_ptr, pid, num_seqs, BLOCK_Q: tl.constexpr):
    """Largest i in [0, num_seqs) with query_start_loc[i] // BLOCK_Q + i <= pid."""
    # Start both bounds as int32 tensors: Triton specializes an int argument equal to 1 into
    # a constexpr, and a loop-carried variable must keep one type across iterations.
    lo = pid * 0
    hi = lo + num_seqs
    while hi - lo > 1:
        mid = (lo + hi) // 2
        start = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        go_right = start <= pid
        lo = tl.where(go_right, mid, lo)
        hi = tl.where(go_right, hi, mid)
    return lo


@triton.jit
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr, block_tables_ptr,
    query_start_loc_ptr, context_lens_ptr, out_ptr, qk_scale, num_seqs, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_sb, stride_st,
    stride_sh, stride_bts, stride_ot, stride_oh,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_Q: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, KV_QUANT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = _find_seq(query_start_loc_ptr, pid, num_seqs, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    tile = pid - (q_start // BLOCK_Q + seq)
    if tile * BLOCK_Q >= q_len:  # spare program of the grid bound
        return
    ctx = tl.load(context_lens_ptr + seq)
    first_pos = ctx - q_len  # position of this sequence's first new token

    BLOCK_M: tl.constexpr = BLOCK_Q * BLOCK_G
    offs_m = tl.arange(0, BLOCK_M)
    tok = tile * BLOCK_Q + offs_m // BLOCK_G  # token index within the sequence's queries
    g = offs_m % BLOCK_G
    heads = kv_head * GROUP + g
    row_mask = (tok < q_len) & (g < GROUP)
    pos = first_pos + tok
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    offs_t = tl.arange(0, BLOCK_SIZE)
    q = tl.load(
        q_ptr + (q_start + tok)[:, None] * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
        mask=row_mask[:, None] & d_mask[None, :],
        other=0.0,
    )

    m_i = tl.full([BLOCK_M], NEG_BIG, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Causal: the tile's last query sits at kv_end - 1, so no key at or past kv_end is needed.
    kv_end = first_pos + tl.minimum(q_len, (tile + 1) * BLOCK_Q)
    for page in range(tl.cdiv(kv_end, BLOCK_SIZE)):
        block = tl.load(block_tables_ptr + seq * stride_bts + page).to(tl.int64)
        key_pos = page * BLOCK_SIZE + offs_t
        t_mask = key_pos < kv_end
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
        s = tl.dot(
            q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION
        )  # [BLOCK_M, BLOCK_SIZE]
        if KV_QUANT:
            s_off = block * stride_sb + offs_t * stride_st + kv_head * stride_sh
            s = s * tl.load(k_scale_ptr + s_off, mask=t_mask, other=0.0)[None, :]
        causal = (key_pos[None, :] <= pos[:, None]) & t_mask[None, :]
        s = tl.where(causal, s * qk_scale, float("-inf"))
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
        if KV_QUANT:
            p = p * tl.load(v_scale_ptr + s_off, mask=t_mask, other=0.0)[None, :]
        acc = acc * alpha[:, None] + tl.dot(
            p.to(q.dtype), v.to(q.dtype), input_precision=DOT_PRECISION
        )
        m_i = m_new

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(
        out_ptr
        + (q_start + tok)[:, None] * stride_ot
        + heads[:, None] * stride_oh
        + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_mask[:, None] & d_mask[None, :],
    )


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of packed new tokens against the paged cache (prefix + themselves).

    q [T, H, D] fp32/fp16/bf16 packed; query_start_loc int32 [S + 1] (starts at 0, non-
    decreasing); context_lens int32 [S] = cached prefix + new tokens (>= the sequence's new
    tokens); block_tables int32 [S, max_blocks]; caches/scales as in decode. Returns
    out [T, H, D] in q's dtype; rows past query_start_loc[-1] are not written.
    """
    quantized = check_prefill_args(
        q,
        k_cache,
        v_cache,
        block_tables,
        query_start_loc,
        context_lens,
        scale,
        k_scale,
        v_scale,
        out,
    )
    total_q, num_heads, head_dim = q.shape
    num_seqs = block_tables.shape[0]
    _, block_size, kv_heads, _ = k_cache.shape
    if not is_pow2(block_size) or block_size < 16:
        raise ValueError(f"block_size must be a power of two >= 16 (tl.dot tile), got {block_size}")
    if out is None:
        out = torch.empty_like(q)
    if total_q == 0 or num_seqs == 0:
        return out
    group = num_heads // kv_heads
    block_g = next_pow2(group)
    block_q = max(1, BLOCK_M_TARGET // block_g)
    if quantized:
        if not (k_scale.is_contiguous() and v_scale.is_contiguous()):
            raise ValueError("k_scale and v_scale must be contiguous")
        scale_strides = k_scale.stride()
    else:
        k_scale = v_scale = q  # placeholders: KV_QUANT=False never reads them
        scale_strides = (0, 0, 0)
    grid = (total_q // block_q + num_seqs, kv_heads)
    _prefill_kernel[grid](
        q, k_cache, v_cache, k_scale, v_scale, block_tables, query_start_loc, context_lens, out,
        float(scale) * LOG2E, num_seqs, q.stride(0), q.stride(1), k_cache.stride(0),
        k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), *scale_strides, block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=group, BLOCK_G=block_g, BLOCK_Q=block_q, HEAD_DIM=head_dim,
        BLOCK_D=next_pow2(head_dim), BLOCK_SIZE=block_size, KV_QUANT=quantized,
        DOT_PRECISION=dot_precision(q.dtype),
    )  # fmt: skip
    return out

"""Paged attention over the KV cache (torch references, fp32 math).

Shapes: q [*, H, D]; k_cache/v_cache [num_blocks, block_size, Hkv, D]; block_tables int32
[S, max_blocks]; context_lens int32 [S]. GQA: query head h reads KV head h // (H // Hkv).
"""

from __future__ import annotations

import torch

from .._checks import (
    FLOAT_DTYPES,
    check_kv_cache,
    check_last_dim_contiguous,
    check_same_device,
    check_tensor,
)
from .kvcache import gather_kv_ref

INDEX_DTYPES = (torch.int32,)


def check_attention_args(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
    out: torch.Tensor | None,
) -> bool:
    """Validate arguments common to decode and prefill; return whether the cache is quantized."""
    quantized = check_kv_cache(k_cache, v_cache, k_scale, v_scale)
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES)
    check_last_dim_contiguous("q", q)
    num_heads, head_dim = q.shape[1], q.shape[2]
    kv_heads = k_cache.shape[2]
    if k_cache.shape[3] != head_dim:
        raise ValueError(f"k_cache head_dim {k_cache.shape[3]} != q head_dim {head_dim}")
    if num_heads % kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({kv_heads})")
    check_tensor("block_tables", block_tables, ndim=2, dtypes=INDEX_DTYPES)
    num_seqs = block_tables.shape[0]
    check_tensor("context_lens", context_lens, shape=(num_seqs,), dtypes=INDEX_DTYPES)
    if not isinstance(scale, (float, int)) or scale <= 0:
        raise ValueError(f"scale must be a positive float, got {scale!r}")
    if out is not None:
        check_tensor("out", out, shape=tuple(q.shape), dtypes=(q.dtype,))
        check_last_dim_contiguous("out", out)
    check_same_device(
        q=q, k_cache=k_cache, block_tables=block_tables, context_lens=context_lens, out=out
    )
    return quantized


def check_decode_args(
    q, k_cache, v_cache, block_tables, context_lens, scale, k_scale, v_scale, num_splits, out
) -> bool:
    quantized = check_attention_args(
        q, k_cache, v_cache, block_tables, context_lens, scale, k_scale, v_scale, out
    )
    if q.shape[0] != block_tables.shape[0]:
        raise ValueError(
            f"q has {q.shape[0]} sequences but block_tables has {block_tables.shape[0]}"
        )
    if num_splits is not None and (not isinstance(num_splits, int) or num_splits < 1):
        raise ValueError(f"num_splits must be None or a positive int, got {num_splits!r}")
    return quantized


def paged_decode_attention_ref(
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
    """One query per sequence attends to its first ``context_lens[s]`` cached tokens.

    q [S, H, D] -> out [S, H, D] (q dtype). ``num_splits`` only matters to the Triton kernel.
    A sequence with context 0 gets zeros. Vectorized over sequences (padded to the longest
    context) because the engine calls this on CPU every decode step.
    """
    check_decode_args(
        q, k_cache, v_cache, block_tables, context_lens, scale, k_scale, v_scale, num_splits, out
    )
    num_seqs, num_heads, head_dim = q.shape
    kv_heads = k_cache.shape[2]
    group = num_heads // kv_heads
    if out is None:
        out = torch.empty_like(q)
    n = int(context_lens.max()) if num_seqs else 0
    if n == 0:
        return out.zero_()
    keys = gather_kv_ref(k_cache, k_scale, block_tables, n)  # [S, n, Hkv, D]
    values = gather_kv_ref(v_cache, v_scale, block_tables, n)
    qf = q.float().view(num_seqs, kv_heads, group, head_dim)
    scores = torch.einsum("skgd,snkd->skgn", qf, keys) * scale
    valid = torch.arange(n, device=q.device)[None, :] < context_lens[:, None].long()  # [S, n]
    scores.masked_fill_(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs.masked_fill_((context_lens == 0)[:, None, None, None], 0.0)  # softmax of all -inf = NaN
    o = torch.einsum("skgn,snkd->skgd", probs, values)
    out.copy_(o.reshape(num_seqs, num_heads, head_dim))
    return out


def check_prefill_args(
    q, k_cache, v_cache, block_tables, query_start_loc, context_lens, scale, k_scale, v_scale, out
) -> bool:
    quantized = check_attention_args(
        q, k_cache, v_cache, block_tables, context_lens, scale, k_scale, v_scale, out
    )
    check_tensor(
        "query_start_loc", query_start_loc, shape=(block_tables.shape[0] + 1,), dtypes=INDEX_DTYPES
    )
    return quantized


def paged_prefill_attention_ref(
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
    """Causal attention for packed new tokens whose k/v are already in the paged cache.

    q [T, H, D] packed; sequence i owns rows ``query_start_loc[i]:query_start_loc[i+1]``
    (n_i rows), which are its LAST n_i positions ``context_lens[i] - n_i ..``; the query at
    position p attends to keys 0..p. Rows past ``query_start_loc[-1]`` are left untouched
    (zeros when ``out`` is allocated here). Loops over sequences, vectorized inside one.
    """
    check_prefill_args(
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
    total, num_heads, head_dim = q.shape
    kv_heads = k_cache.shape[2]
    group = num_heads // kv_heads
    if out is None:
        out = torch.zeros_like(q)
    starts = query_start_loc.tolist()
    lens = context_lens.tolist()
    if starts[-1] > total:
        raise ValueError(f"query_start_loc[-1]={starts[-1]} exceeds q's {total} rows")
    for i, ctx in enumerate(lens):
        q0, q1 = starts[i], starts[i + 1]
        nq = q1 - q0
        if nq <= 0:
            continue
        if ctx < nq:
            raise ValueError(f"sequence {i}: context_lens={ctx} < its {nq} new query tokens")
        keys = gather_kv_ref(k_cache, k_scale, block_tables[i : i + 1], ctx)[0]  # [ctx, Hkv, D]
        values = gather_kv_ref(v_cache, v_scale, block_tables[i : i + 1], ctx)[0]
        qf = q[q0:q1].float().view(nq, kv_heads, group, head_dim)
        scores = torch.einsum("tkgd,nkd->kgtn", qf, keys) * scale  # [Hkv, G, nq, ctx]
        pos = torch.arange(ctx - nq, ctx, device=q.device)
        causal = torch.arange(ctx, device=q.device)[None, :] <= pos[:, None]  # [nq, ctx]
        scores.masked_fill_(~causal, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        o = torch.einsum("kgtn,nkd->tkgd", probs, values)
        out[q0:q1] = o.reshape(nq, num_heads, head_dim).to(q.dtype)
    return out

"""``attention=torch``: the reference backend, one sequence at a time with torch SDPA.

Slow but obviously correct; it is the oracle the batched backends are tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from infer.attention.base import AttentionMetadata, SeqSlice, build_metadata
from infer.quant.kv_cache import dequantize, layer_is_quantized
from infer.quant.kv_cache import store_kv as store_quantized_kv


def store_kv(
    k: torch.Tensor, v: torch.Tensor, kv_cache: tuple[torch.Tensor, torch.Tensor], slots: torch.Tensor
) -> None:
    """Write k/v [T, Hk, D] into the caches' flat slot view at ``slots`` (int64 [T]).
    A quantized cache (k, v, k_scale, v_scale) gets codes and scales (quant/kv_cache.py)."""
    if layer_is_quantized(kv_cache):
        return store_quantized_kv(k, v, kv_cache, slots)
    k_cache, v_cache = kv_cache
    hk, d = k_cache.shape[-2:]
    k_cache.view(-1, hk, d).index_copy_(0, slots, k.to(k_cache.dtype))
    v_cache.view(-1, hk, d).index_copy_(0, slots, v.to(v_cache.dtype))


def gather_context(
    cache: torch.Tensor, block_table: torch.Tensor, ctx_len: int
) -> torch.Tensor:
    """The first ctx_len cached tokens of one sequence: [ctx_len, Hk, D].

    A single block (always the case for the contiguous cache) is sliced as a view; only
    multi-block contexts are gathered, and only the blocks they use."""
    bs = cache.shape[1]
    nblocks = (ctx_len + bs - 1) // bs
    if nblocks == 1:
        return cache[int(block_table[0])][:ctx_len]
    return cache[block_table[:nblocks].long()].flatten(0, 1)[:ctx_len]


def gather_kv(
    kv_cache: tuple[torch.Tensor, ...], block_table: torch.Tensor, ctx_len: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v [ctx_len, Hk, D] of one sequence; a quantized cache's blocks are dequantized."""
    k = gather_context(kv_cache[0], block_table, ctx_len)
    v = gather_context(kv_cache[1], block_table, ctx_len)
    if layer_is_quantized(kv_cache):
        k = dequantize(k, gather_context(kv_cache[2], block_table, ctx_len), dtype)
        v = dequantize(v, gather_context(kv_cache[3], block_table, ctx_len), dtype)
    return k, v


def attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of the last n positions. q [n, Hq, D], k/v [c, Hk, D] -> [n, Hq, D]."""
    n, c = q.shape[0], k.shape[0]
    qh, kh, vh = q.transpose(0, 1), k.transpose(0, 1).to(q.dtype), v.transpose(0, 1).to(q.dtype)
    gqa = qh.shape[0] != kh.shape[0]
    if n == 1:
        out = F.scaled_dot_product_attention(qh, kh, vh, scale=scale, enable_gqa=gqa)
    elif n == c:
        # whole sequence: top-left causal is exact here and takes the fused flash path
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        # query j sits at position c - n + j and sees keys 0..c-n+j
        mask = torch.arange(c, device=q.device)[None, :] <= (
            torch.arange(n, device=q.device)[:, None] + (c - n)
        )
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return out.transpose(0, 1)


def causal_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal self-attention of a whole fresh sequence. q [n, Hq, D], k/v [n, Hk, D].

    GQA without expanding k/v: the G query heads of a kv head are stacked as rows of one
    batched GEMM. Faster than SDPA's CPU flash path at prompt lengths; above 1024 tokens
    the n^2 score tensor gets large, so SDPA takes over."""
    n, hq, d = q.shape
    hk = k.shape[1]
    if n > 1024:
        return attend_one(q, k, v, scale)
    g = hq // hk
    qh = q.view(n, hk, g, d).permute(1, 0, 2, 3).reshape(hk, n * g, d)
    s = torch.bmm(qh, k.permute(1, 2, 0)).mul_(scale).view(hk, n, g, n)
    s.add_(torch.full((n, n), float("-inf"), dtype=s.dtype, device=s.device).triu_(1)[None, :, None, :])
    p = s.softmax(-1).view(hk, n * g, n)
    return torch.bmm(p, v.transpose(0, 1)).view(hk, n, g, d).permute(1, 0, 2, 3).reshape(n, hq, d)


class TorchRefBackend:
    """Reference attention: per-sequence gather + SDPA."""

    name = "torch"

    def plan(self, seqs: list[SeqSlice], block_size: int, device: torch.device) -> AttentionMetadata:
        return build_metadata(seqs, block_size, device)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        metadata: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        store_kv(k, v, kv_cache, metadata.slot_mapping)
        out = torch.empty_like(q)
        start = 0
        for i, (n, c) in enumerate(zip(metadata.query_lens_list, metadata.context_lens_list)):
            bt = metadata.block_tables[i]
            kk, vv = gather_kv(kv_cache, bt, c, q.dtype)
            out[start : start + n] = attend_one(q[start : start + n], kk, vv, scale)
            start += n
        return out

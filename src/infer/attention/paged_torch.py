"""``attention=paged``: paged KV (block tables) with batched attention on any device.

On CPU with fp32 KV (and ``cpu_kernel=True``) a compiled C++ kernel attends the whole step
in one call, in place over the blocks (decodes, verify rows, prefix-extending chunks and fresh
prompts alike; see csrc/paged_attention_cpu.cpp). Otherwise, in torch: decodes (one query each) are attended together: their blocks are gathered into one padded
[B, L, Hk, D] tensor and a single masked SDPA call covers the batch. Prefill chunks are
attended per sequence (each is large, so the loop costs little); a chunk with no cached
prefix attends to its fresh k/v directly without reading the cache back, but through
``as_stored``: with an int8/fp8 cache it sees the dequantized values every later chunk,
decode or prefix hit reads, so outputs never depend on how a prompt was chunked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from infer.attention import cpu_kernel
from infer.attention.base import AttentionMetadata, SeqSlice, build_metadata
from infer.attention.torch_ref import attend_one, gather_kv, store_kv
from infer.quant.kv_cache import as_stored, dequantize, layer_is_quantized


def plan_decode(
    block_tables: torch.Tensor, context_lens: torch.Tensor, context_list: list[int], block_size: int
) -> dict[str, object]:
    """Per-step decode tensors shared by all layers: flat block ids and the padding mask."""
    b = len(context_list)
    max_ctx = max(context_list)
    nblocks = (max_ctx + block_size - 1) // block_size
    flat = block_tables[:b, :nblocks].reshape(-1).long()
    # one sequence: slice exactly its context, no mask needed
    mask = None
    if b > 1:
        pad = torch.arange(nblocks * block_size, device=block_tables.device)
        mask = (pad[None, :] < context_lens[:b, None])[:, None, None, :]
    return {"flat_blocks": flat, "mask": mask, "max_context": max_ctx}


def gather_group_kv(
    kv_cache: tuple[torch.Tensor, ...], flat: torch.Tensor, b: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v [B, L, Hk, D] of a decode group from its flat block ids [B * nb] (blocks of a
    quantized cache are dequantized to ``dtype``; L = nb * BS, padded past each context)."""
    hk, d = kv_cache[0].shape[-2:]
    k = kv_cache[0].index_select(0, flat).view(b, -1, hk, d)
    v = kv_cache[1].index_select(0, flat).view(b, -1, hk, d)
    if layer_is_quantized(kv_cache):  # int8/fp8 codes: dequantize the gathered blocks
        k = dequantize(k, kv_cache[2].index_select(0, flat).view(b, -1, hk), dtype)
        v = dequantize(v, kv_cache[3].index_select(0, flat).view(b, -1, hk), dtype)
    return k, v


def decode_attention(
    q: torch.Tensor,
    kv_cache: tuple[torch.Tensor, torch.Tensor],
    plan: dict[str, object],
    scale: float,
) -> torch.Tensor:
    """q [B, Hq, D] (one token per sequence) over its cached context -> [B, Hq, D].

    ``plan`` comes from ``plan_decode`` (flat block ids [B * nb], mask [B, 1, 1, L] or None).
    """
    b = q.shape[0]
    mask = plan["mask"]
    hk = kv_cache[0].shape[-2]
    k, v = gather_group_kv(kv_cache, plan["flat_blocks"], b, q.dtype)  # type: ignore[arg-type]
    if mask is None:
        n = int(plan["max_context"])  # type: ignore[call-overload]
        k, v = k[:, :n], v[:, :n]
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2), k.transpose(1, 2).to(q.dtype), v.transpose(1, 2).to(q.dtype),
        attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != hk,  # type: ignore[arg-type]
    )
    return out.squeeze(2)


def plan_multi_query(md: AttentionMetadata, ng: int) -> dict[str, object]:
    """Per-step tensors for a decode group with several queries per sequence (verify rows):
    the queries padded to [B, maxq] (``query_rows`` indexes the packed q, ``query_valid``
    marks real ones) and the causal mask [B, 1, maxq, L] over the gathered context."""
    qlens = md.query_lens_list[:ng]
    maxq = max(qlens)
    dev = md.context_lens.device
    n = torch.tensor(qlens, device=dev)
    starts = md.query_start_loc[:ng].long()
    qi = torch.arange(maxq, device=dev)
    valid = qi[None, :] < n[:, None]
    rows = torch.where(valid, starts[:, None] + qi[None, :], torch.zeros((), dtype=torch.long, device=dev))
    ctx = md.context_lens[:ng].long()
    nblocks = (max(md.context_lens_list[:ng]) + md.block_size - 1) // md.block_size
    keys = torch.arange(nblocks * md.block_size, device=dev)
    # query i of sequence b sits at position ctx - n + i and sees keys 0..ctx - n + i; padded
    # queries see key 0 only (finite softmax; their output is dropped)
    last = torch.where(valid, (ctx - n)[:, None] + qi[None, :], torch.zeros_like(rows))
    mask = keys[None, None, :] <= last[:, :, None]
    return {"query_rows": rows.reshape(-1), "query_valid": valid.reshape(-1), "mq_mask": mask[:, None]}


def multi_query_attention(
    q: torch.Tensor,
    kv_cache: tuple[torch.Tensor, ...],
    plan: dict[str, object],
    scale: float,
) -> torch.Tensor:
    """The decode group with several queries per sequence: q [Tg, Hq, D] packed -> [Tg, Hq, D].
    One gather of every sequence's blocks and one masked SDPA call for the whole group."""
    mask = plan["mq_mask"]
    b, maxq = mask.shape[0], mask.shape[2]  # type: ignore[attr-defined]
    hk, d = kv_cache[0].shape[-2:]
    k, v = gather_group_kv(kv_cache, plan["flat_blocks"], b, q.dtype)  # type: ignore[arg-type]
    qp = q.index_select(0, plan["query_rows"]).view(b, maxq, q.shape[1], d)  # type: ignore[arg-type]
    out = F.scaled_dot_product_attention(
        qp.transpose(1, 2), k.transpose(1, 2).to(q.dtype), v.transpose(1, 2).to(q.dtype),
        attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != hk,  # type: ignore[arg-type]
    )
    return out.transpose(1, 2).reshape(b * maxq, q.shape[1], d)[plan["query_valid"]]  # type: ignore[index]


class PagedTorchBackend:
    """Paged attention: the CPU kernel when it applies, else batched torch decodes and
    per-sequence prefill/extend.

    Args:
        cpu_kernel: use the compiled CPU kernel for fp32 caches on CPU when it builds.
    """

    name = "paged"

    def __init__(self, cpu_kernel: bool = True) -> None:
        self.cpu_kernel = cpu_kernel
        self.use_kernel = False  # decided with the cache layout, in bind

    def bind(self, kv: Any, device: torch.device) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Choose the kernel for this model's cache (fp32 on CPU, extension built) and
        return its layer cache shapes."""
        self.use_kernel = (
            self.cpu_kernel and device.type == "cpu" and kv.dtype == torch.float32
            and cpu_kernel.available()
        )
        if self.use_kernel:
            return cpu_kernel.kv_cache_shapes(kv.num_blocks, kv.block_size, kv.num_kv_heads, kv.head_dim)
        shape = (kv.num_blocks, kv.block_size, kv.num_kv_heads, kv.head_dim)
        return shape, shape

    def plan(self, seqs: list[SeqSlice], block_size: int, device: torch.device) -> AttentionMetadata:
        md = build_metadata(seqs, block_size, device)
        ng = md.num_decode_group
        if ng and not self.use_kernel:
            md.extra["decode"] = plan_decode(
                md.block_tables, md.context_lens, md.context_lens_list[:ng], block_size
            )
            if ng > md.num_decodes:  # verify rows: several queries per sequence
                md.extra["decode"].update(plan_multi_query(md, ng))
        return md

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        metadata: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        md = metadata
        if self.use_kernel:
            # one call for the whole step (decodes, verify rows, extensions, fresh prompts):
            # the kernel reads each K/V slice once per tile of (token, head) rows
            k_cache, v_cache = kv_cache
            cpu_kernel.store_kv(k, v, k_cache, v_cache, md.slot_mapping)
            return cpu_kernel.paged_attention(
                q, k_cache, v_cache, md.block_tables, md.query_start_loc, md.context_lens, scale
            )

        store_kv(k, v, kv_cache, md.slot_mapping)

        def extend_torch(i: int, qi: torch.Tensor) -> torch.Tensor:
            ki, vi = gather_kv(kv_cache, md.block_tables[i], md.context_lens_list[i], q.dtype)
            return attend_one(qi, ki, vi, scale)

        def fresh_torch(qi: torch.Tensor, ki: torch.Tensor, vi: torch.Tensor, s: float) -> torch.Tensor:
            # the values a read of the cache returns (dequantized codes for int8/fp8)
            return attend_one(qi, as_stored(ki, kv_cache, 0), as_stored(vi, kv_cache, 1), s)

        def decodes_torch(qd: torch.Tensor, nd: int) -> torch.Tensor:
            plan = md.extra["decode"]
            if "query_rows" in plan:
                return multi_query_attention(qd, kv_cache, plan, scale)
            return decode_attention(qd, kv_cache, plan, scale)

        return _split_attend(q, k, v, md, scale, decodes_torch, fresh_torch, extend_torch)


def _split_attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    md: AttentionMetadata,
    scale: float,
    decodes: Callable[[torch.Tensor, int], torch.Tensor],
    fresh: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor],
    extend: Callable[[int, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """One step's attention, split the way the metadata orders it: the decode group (decodes
    and verify rows) in one batched call, then each prefill chunk alone, either a whole fresh
    prompt (``fresh`` on its own new k/v) or a chunk extending a cached prefix."""
    nd = md.num_decode_group
    nq = sum(md.query_lens_list[:nd])
    if nd == md.num_seqs:
        return decodes(q, nd)
    out = torch.empty_like(q)
    if nd:
        out[:nq] = decodes(q[:nq], nd)
    start = nq
    for i in range(nd, md.num_seqs):
        n, c = md.query_lens_list[i], md.context_lens_list[i]
        qi = q[start : start + n]
        if n == c:
            out[start : start + n] = fresh(qi, k[start : start + n], v[start : start + n], scale)
        else:
            out[start : start + n] = extend(i, qi)
        start += n
    return out

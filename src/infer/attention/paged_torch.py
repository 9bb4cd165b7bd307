"""``attention=paged``: paged KV (block tables) with batched attention on any device.

On CPU with fp32 KV (and ``cpu_kernel=True``) a compiled C++ kernel attends decodes and
prefix-extending chunks in place over their blocks (see csrc/paged_attention_cpu.cpp);
fresh prompts attend to their own new k/v with batched GEMMs. Otherwise, in torch: decodes (one query each) are attended together: their blocks are gathered into one padded
[B, L, Hk, D] tensor and a single masked SDPA call covers the batch. Prefill chunks are
attended per sequence (each is large, so the loop costs little); a chunk with no cached
prefix attends to its fresh k/v directly without touching the cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from infer.attention import cpu_kernel
from infer.attention.base import AttentionMetadata, SeqSlice, build_metadata
from infer.attention.torch_ref import attend_one, causal_prefill, gather_kv, store_kv
from infer.quant.kv_cache import dequantize


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


def decode_attention(
    q: torch.Tensor,
    kv_cache: tuple[torch.Tensor, torch.Tensor],
    plan: dict[str, object],
    scale: float,
) -> torch.Tensor:
    """q [B, Hq, D] (one token per sequence) over its cached context -> [B, Hq, D].

    ``plan`` comes from ``plan_decode`` (flat block ids [B * nb], mask [B, 1, 1, L] or None).
    """
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    b = q.shape[0]
    flat, mask = plan["flat_blocks"], plan["mask"]
    hk, d = k_cache.shape[-2:]
    # [B*nb, BS, Hk, D] -> [B, L, Hk, D] -> [B, Hk, L, D]
    k = k_cache.index_select(0, flat).view(b, -1, hk, d)  # type: ignore[arg-type]
    v = v_cache.index_select(0, flat).view(b, -1, hk, d)  # type: ignore[arg-type]
    if len(kv_cache) == 4:  # int8/fp8 codes: dequantize the gathered blocks
        k = dequantize(k, kv_cache[2].index_select(0, flat).view(b, -1, hk), q.dtype)  # type: ignore[arg-type]
        v = dequantize(v, kv_cache[3].index_select(0, flat).view(b, -1, hk), q.dtype)  # type: ignore[arg-type]
    if mask is None:
        n = int(plan["max_context"])  # type: ignore[call-overload]
        k, v = k[:, :n], v[:, :n]
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2), k.transpose(1, 2).to(q.dtype), v.transpose(1, 2).to(q.dtype),
        attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != hk,  # type: ignore[arg-type]
    )
    return out.squeeze(2)


class PagedTorchBackend:
    """Paged attention: the CPU kernel when it applies, else batched torch decodes and
    per-sequence prefill/extend.

    Args:
        cpu_kernel: use the compiled CPU kernel for fp32 caches on CPU when it builds.
    """

    name = "paged"

    def __init__(self, cpu_kernel: bool = True) -> None:
        self.cpu_kernel = cpu_kernel
        self.use_kernel = False  # decided with the cache layout, in kv_cache_shapes

    def kv_cache_shapes(
        self, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
        dtype: torch.dtype, device: torch.device,
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        self.use_kernel = (
            self.cpu_kernel and device.type == "cpu" and dtype == torch.float32
            and cpu_kernel.available()
        )
        if self.use_kernel:
            return cpu_kernel.kv_cache_shapes(num_blocks, block_size, num_kv_heads, head_dim)
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        return shape, shape

    def plan(self, seqs: list[SeqSlice], block_size: int, device: torch.device) -> AttentionMetadata:
        md = build_metadata(seqs, block_size, device)
        if md.num_decodes:
            md.extra["decode"] = plan_decode(
                md.block_tables, md.context_lens, md.context_lens_list[: md.num_decodes], block_size
            )
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
        if self.use_kernel:
            return self._forward_kernel(q, k, v, kv_cache, metadata, scale)
        store_kv(k, v, kv_cache, metadata.slot_mapping)
        nd = metadata.num_decodes
        if nd == metadata.num_seqs:
            return decode_attention(q, kv_cache, metadata.extra["decode"], scale)
        out = torch.empty_like(q)
        if nd:
            out[:nd] = decode_attention(q[:nd], kv_cache, metadata.extra["decode"], scale)
        start = nd
        for i in range(nd, metadata.num_seqs):
            n, c = metadata.query_lens_list[i], metadata.context_lens_list[i]
            qi = q[start : start + n]
            if n == c:  # no cached prefix: attend to the fresh k/v
                ki, vi = k[start : start + n], v[start : start + n]
            else:
                bt = metadata.block_tables[i]
                ki, vi = gather_kv(kv_cache, bt, c, q.dtype)
            out[start : start + n] = attend_one(qi, ki, vi, scale)
            start += n
        return out

    def _forward_kernel(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        md: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        """Decodes and prefix extensions through the C++ kernel (memory-bound, reads each
        block once); whole fresh prompts through GEMMs on their own k/v (compute-bound)."""
        k_cache, v_cache = kv_cache
        cpu_kernel.store_kv(k, v, k_cache, v_cache, md.slot_mapping)
        nd = md.num_decodes
        if nd == md.num_seqs:
            return cpu_kernel.paged_attention(
                q, k_cache, v_cache, md.block_tables, md.query_start_loc, md.context_lens, scale
            )
        out = torch.empty_like(q)
        if nd:
            out[:nd] = cpu_kernel.paged_attention(
                q[:nd], k_cache, v_cache, md.block_tables[:nd], md.query_start_loc[: nd + 1],
                md.context_lens[:nd], scale,
            )
        start = nd
        for i in range(nd, md.num_seqs):
            n, c = md.query_lens_list[i], md.context_lens_list[i]
            if n == c:
                out[start : start + n] = causal_prefill(
                    q[start : start + n], k[start : start + n], v[start : start + n], scale
                )
            else:
                qsl = torch.tensor([0, n], dtype=torch.int32)
                out[start : start + n] = cpu_kernel.paged_attention(
                    q[start : start + n], k_cache, v_cache, md.block_tables[i : i + 1], qsl,
                    md.context_lens[i : i + 1], scale,
                )
            start += n
        return out

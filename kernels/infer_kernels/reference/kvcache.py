"""Paged KV-cache write and gather (torch references).

Layout: cache [num_blocks, block_size, num_kv_heads, head_dim]; slot = block * block_size + offset.
Quantized caches (int8 / float8_e4m3fn) carry fp32 scales [num_blocks, block_size, num_kv_heads].
"""

from __future__ import annotations

import torch

from .._checks import FLOAT_DTYPES, check_kv_cache, check_same_device, check_tensor
from .quant import quantize_last_dim


def check_store_args(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
) -> bool:
    """Validate :func:`store_kvcache_ref` arguments; return whether the cache is quantized."""
    quantized = check_kv_cache(k_cache, v_cache, k_scale, v_scale)
    _, _, kv_heads, head_dim = k_cache.shape
    check_tensor("k", k, shape=(None, kv_heads, head_dim), dtypes=FLOAT_DTYPES)
    check_tensor("v", v, shape=tuple(k.shape), dtypes=FLOAT_DTYPES)
    check_tensor(
        "slot_mapping", slot_mapping, shape=(k.shape[0],), dtypes=(torch.int64, torch.int32)
    )
    check_same_device(
        k=k,
        v=v,
        k_cache=k_cache,
        v_cache=v_cache,
        slot_mapping=slot_mapping,
        k_scale=k_scale,
        v_scale=v_scale,
    )
    return quantized


def store_kvcache_ref(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Write ``k, v [T, Hkv, D]`` into the paged cache at ``slot_mapping [T]`` (in place).

    Slots < 0 are padding and skipped. A float cache receives a plain cast; an int8/fp8 cache
    receives per-token-per-head codes and the matching fp32 scales (see ``reference.quant``).
    """
    quantized = check_store_args(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    block_size = k_cache.shape[1]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    blk, off = slots // block_size, slots % block_size  # (block, offset) indexing: any strides
    for src, cache, scale in ((k, k_cache, k_scale), (v, v_cache, v_scale)):
        x = src[keep]
        if quantized:
            q, s = quantize_last_dim(x, cache.dtype)
            cache[blk, off] = q
            scale[blk, off] = s
        else:
            cache[blk, off] = x.to(cache.dtype)


def gather_kv_ref(
    cache: torch.Tensor, scale: torch.Tensor | None, block_tables: torch.Tensor, num_tokens: int
) -> torch.Tensor:
    """Read the first ``num_tokens`` positions of every sequence as fp32 ``[S, n, Hkv, D]``.

    ``block_tables [S, max_blocks]`` int32. Positions past a sequence's own length read
    whatever its (valid or padding) block ids point at; callers mask them.
    """
    block_size = cache.shape[1]
    n_blocks = -(-num_tokens // block_size)
    ids = block_tables[:, :n_blocks].long().clamp(0, cache.shape[0] - 1)  # padding ids may be junk
    s = ids.shape[0]
    x = cache[ids].float().reshape(s, n_blocks * block_size, *cache.shape[2:])[:, :num_tokens]
    if scale is not None:
        sc = scale[ids].reshape(s, n_blocks * block_size, scale.shape[2])[:, :num_tokens]
        x = x * sc.unsqueeze(-1)
    return x

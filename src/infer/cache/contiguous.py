"""Contiguous KV: each sequence owns one region of max_model_len slots.

It is the paged manager with block_size == max_model_len (one block per sequence), so the
reference attention backend and the paged backends read the cache the same way.
"""

from __future__ import annotations

from infer.cache.paged import PagedKVCacheManager


class ContiguousKVCacheManager(PagedKVCacheManager):
    """One max_model_len block per running sequence (no paging, no sharing)."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        super().__init__(num_blocks, block_size)

"""Fixed-size KV block allocator with reference counts (blocks may be shared)."""

from __future__ import annotations

from collections import deque


class BlockAllocator:
    """Hands out block ids in [0, num_blocks); a block returns to the free list at refcount 0."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        """A fresh block with refcount 1. Raises RuntimeError when none is free."""
        if not self._free:
            raise RuntimeError("out of KV blocks")
        b = self._free.popleft()
        self.ref_counts[b] = 1
        return b

    def incref(self, block: int) -> None:
        """Share an allocated block (e.g. a cached prefix)."""
        if self.ref_counts[block] <= 0:
            raise RuntimeError(f"incref on free block {block}")
        self.ref_counts[block] += 1

    def decref(self, block: int) -> bool:
        """Drop one reference; returns True when the block became free."""
        if self.ref_counts[block] <= 0:
            raise RuntimeError(f"double free of block {block}")
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            self._free.append(block)
            return True
        return False

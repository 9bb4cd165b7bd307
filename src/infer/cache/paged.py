"""KVCacheManager protocol and the paged (block table) implementation.

A contiguous cache is the special case block_size == max_model_len: one block per sequence.
"""

from __future__ import annotations

from typing import Protocol

from infer.cache.block_allocator import BlockAllocator
from infer.sequence import Sequence


class KVCacheManager(Protocol):
    """Maps sequences to KV blocks. Knows tokens and blocks, not the model."""

    block_size: int
    num_blocks: int

    def match_prefix(self, seq: Sequence) -> int:
        """Attach cached blocks for seq's prompt prefix; returns tokens already cached."""
        ...

    def peek_prefix(self, seq: Sequence) -> int:
        """Tokens of seq that ``match_prefix`` would reuse, attaching nothing (0 without reuse)."""
        ...

    def trim(self, seq: Sequence) -> None:
        """Release seq's blocks beyond its ``num_computed_tokens`` (slots reserved for draft
        tokens that were rejected or never proposed)."""
        ...

    def can_allocate(self, seq: Sequence, n_new: int) -> bool:
        """Whether ``n_new`` more tokens of seq fit without evicting live data."""
        ...

    def allocate(self, seq: Sequence, n_new: int) -> bool:
        """Reserve slots for n_new more tokens of seq (after its computed ones)."""
        ...

    def free(self, seq: Sequence) -> None:
        """Release seq's blocks (the policy may keep them cached)."""
        ...

    def block_table(self, seq: Sequence) -> list[int]:
        """Block ids of seq in order."""
        ...

    def on_tokens_computed(self, seq: Sequence) -> None:
        """Hook after a step committed seq's new KV (prefix caches index it here)."""
        ...

    def usage(self) -> float:
        """Fraction of blocks in use."""
        ...


class PagedKVCacheManager:
    """Per-sequence block tables over a shared pool; no reuse across requests."""

    #: whether ``match_prefix`` can ever return > 0 (schedule_policy=lpm needs it)
    reuses_prefixes = False

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.allocator = BlockAllocator(num_blocks)
        self._tables: dict[int, list[int]] = {}

    def blocks_needed(self, seq: Sequence, n_new: int) -> int:
        have = len(self._tables.get(seq.seq_id, []))
        total = seq.num_computed_tokens + n_new
        return max(0, -(-total // self.block_size) - have)

    def match_prefix(self, seq: Sequence) -> int:
        return 0

    def peek_prefix(self, seq: Sequence) -> int:
        return 0

    def trim(self, seq: Sequence) -> None:
        table = self._tables.get(seq.seq_id)
        if not table:
            return
        keep = -(-seq.num_computed_tokens // self.block_size)
        while len(table) > keep:
            self.allocator.decref(table.pop())

    def can_allocate(self, seq: Sequence, n_new: int) -> bool:
        return self.blocks_needed(seq, n_new) <= self.allocator.num_free

    def allocate(self, seq: Sequence, n_new: int) -> bool:
        need = self.blocks_needed(seq, n_new)
        if need > self.allocator.num_free:
            return False
        table = self._tables.setdefault(seq.seq_id, [])
        for _ in range(need):
            table.append(self.allocator.allocate())
        return True

    def free(self, seq: Sequence) -> None:
        for b in self._tables.pop(seq.seq_id, []):
            self.allocator.decref(b)

    def block_table(self, seq: Sequence) -> list[int]:
        return self._tables.get(seq.seq_id, [])

    def on_tokens_computed(self, seq: Sequence) -> None:
        return None

    def usage(self) -> float:
        return 1.0 - self.allocator.num_free / self.num_blocks

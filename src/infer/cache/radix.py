"""``attention=radix``: a radix tree over token ids that shares KV blocks across requests
(RadixAttention-style), on top of the paged block pool.

The tree is block-granular: each node owns one full block of ``block_size`` token ids and
the KV block computed for them. A prompt's longest cached prefix of full blocks is attached
to its block table on admission (refcounts pin those blocks); blocks a sequence fills are
inserted as soon as every token in them is computed (prompt blocks during prefill, output
blocks as decoding fills them), so concurrent and later requests can reuse them. Partial
tail blocks are never shared: the tail is recomputed by whoever needs it. Sharing only full
blocks keeps a block's contents immutable once it is in the tree, so no copy-on-write is
needed. When the pool runs short, unreferenced leaves are evicted in LRU order.

Requests that ask for prompt_logprobs are not matched (their prompt is recomputed): the
logits of cached positions were never kept.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from infer.cache.paged import PagedKVCacheManager
from infer.sequence import Sequence


@dataclass(eq=False)
class RadixNode:
    """One full block of tokens in the tree."""

    key: tuple[int, ...]
    block: int
    parent: RadixNode | None
    children: dict[tuple[int, ...], RadixNode] = field(default_factory=dict)
    users: int = 0  # running sequences whose block table includes this node
    last_use: int = 0


class RadixKVCacheManager(PagedKVCacheManager):
    """Paged KV with cross-request prefix reuse and LRU eviction of unused leaves."""

    reuses_prefixes = True

    def __init__(self, num_blocks: int, block_size: int) -> None:
        super().__init__(num_blocks, block_size)
        self.root = RadixNode((), -1, None)
        self._clock = itertools.count(1)
        self._paths: dict[int, list[RadixNode]] = {}  # seq_id -> tree nodes it uses, in order
        self._evictable_count = 0  # tree nodes with users == 0 (their blocks are reclaimable)
        self._frozen: set[int] = set()  # sequences whose chain met an existing duplicate
        self._counted: set[int] = set()  # sequences already counted in the hit statistics
        self.prompt_tokens = 0
        self.cached_prompt_tokens = 0
        self.evictions = 0

    # ---- matching ---------------------------------------------------------------------
    def _walk(self, tokens: list[int], max_tokens: int) -> list[RadixNode]:
        bs = self.block_size
        node, path = self.root, []
        for i in range(min(len(tokens), max_tokens) // bs):
            child = node.children.get(tuple(tokens[i * bs : (i + 1) * bs]))
            if child is None:
                break
            path.append(child)
            node = child
        return path

    def peek_prefix(self, seq: Sequence) -> int:
        """Tokens of seq that a match would reuse, without attaching anything."""
        if seq.params.prompt_logprobs is not None:
            return 0
        return len(self._walk(seq.tokens, seq.num_tokens - 1)) * self.block_size

    def match_prefix(self, seq: Sequence) -> int:
        if seq.params.prompt_logprobs is not None:
            return 0
        # leave at least one token to compute: its logits give the next token
        path = self._walk(seq.tokens, seq.num_tokens - 1)
        now = next(self._clock)
        for node in path:
            self._use(node, now)
            self.allocator.incref(node.block)
        self._tables[seq.seq_id] = [n.block for n in path]
        self._paths[seq.seq_id] = list(path)
        hit = len(path) * self.block_size
        if seq.seq_id not in self._counted:
            self._counted.add(seq.seq_id)
            self.prompt_tokens += seq.num_prompt_tokens
            self.cached_prompt_tokens += min(hit, seq.num_prompt_tokens)
            seq.num_cached_prompt_tokens = min(hit, seq.num_prompt_tokens)
        return hit

    def _use(self, node: RadixNode, now: int) -> None:
        if node.users == 0:
            self._evictable_count -= 1
        node.users += 1
        node.last_use = now

    def _release(self, node: RadixNode) -> None:
        node.users -= 1
        if node.users == 0:
            self._evictable_count += 1

    # ---- insertion --------------------------------------------------------------------
    def on_tokens_computed(self, seq: Sequence) -> None:
        """Insert seq's newly completed full blocks (all their tokens computed)."""
        path = self._paths.setdefault(seq.seq_id, [])
        table = self._tables.get(seq.seq_id, [])
        full = seq.num_computed_tokens // self.block_size
        if len(path) >= full or seq.seq_id in self._frozen:
            return
        bs = self.block_size
        tokens = seq.tokens
        parent = path[-1] if path else self.root
        now = next(self._clock)
        for i in range(len(path), full):
            key = tuple(tokens[i * bs : (i + 1) * bs])
            existing = parent.children.get(key)
            if existing is not None:
                # another sequence cached the same content first: ours stays private, and
                # this sequence's chain stops here (children must extend their parent's block)
                self._frozen.add(seq.seq_id)
                return
            node = RadixNode(key, table[i], parent, last_use=now)
            parent.children[key] = node
            node.users = 1
            self.allocator.incref(node.block)  # the tree's own reference
            path.append(node)
            parent = node

    # ---- allocation with eviction -----------------------------------------------------
    def can_allocate(self, seq: Sequence, n_new: int) -> bool:
        return self.blocks_needed(seq, n_new) <= self.allocator.num_free + self._evictable_count

    def allocate(self, seq: Sequence, n_new: int) -> bool:
        need = self.blocks_needed(seq, n_new)
        if need > self.allocator.num_free:
            self.evict(need - self.allocator.num_free)
        return super().allocate(seq, n_new)

    def evict(self, n_blocks: int) -> int:
        """Free up to n_blocks by dropping least-recently-used unreferenced leaves.

        One scan collects the evictable leaves into a heap on ``last_use``; a parent that
        becomes an unreferenced leaf joins the heap, so a whole cold branch can go in one call
        (O(tree + k log tree) for k evictions)."""
        heap = [(n.last_use, id(n), n) for n in self._iter_nodes() if not n.children and n.users == 0]
        heapq.heapify(heap)
        freed = 0
        while freed < n_blocks and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None
            del parent.children[leaf.key]
            self._evictable_count -= 1
            self.evictions += 1
            if self.allocator.decref(leaf.block):
                freed += 1
            if parent is not self.root and not parent.children and parent.users == 0:
                heapq.heappush(heap, (parent.last_use, id(parent), parent))
        return freed

    def _iter_nodes(self):  # type: ignore[no-untyped-def]
        stack = list(self.root.children.values())
        while stack:
            n = stack.pop()
            yield n
            stack.extend(n.children.values())

    def free(self, seq: Sequence) -> None:
        for node in self._paths.pop(seq.seq_id, []):
            self._release(node)
        self._frozen.discard(seq.seq_id)
        if seq.is_finished:
            self._counted.discard(seq.seq_id)
        super().free(seq)

    def stats(self) -> dict[str, float]:
        """Hit rate = cached prompt tokens / prompt tokens over admitted requests."""
        return {
            "prefix_hit_rate": self.cached_prompt_tokens / max(self.prompt_tokens, 1),
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "prompt_tokens": self.prompt_tokens,
            "evictions": self.evictions,
            "tree_blocks": sum(1 for _ in self._iter_nodes()),
        }


"""The radix tree's eviction: least recently used unreferenced leaves first, a cold branch
freed leaf by leaf up to its root in one call, referenced nodes never touched."""

from __future__ import annotations

from infer.cache.radix import RadixKVCacheManager
from infer.sampling_params import SamplingParams
from infer.sequence import SeqStatus, Sequence

BS = 4


def _run(cache: RadixKVCacheManager, sid: int, tokens: list[int]) -> Sequence:
    """Admit, 'compute' and finish one sequence: its full blocks land in the tree."""
    seq = Sequence(sid, str(sid), None, list(tokens), SamplingParams(max_tokens=1), 0.0)
    cache.match_prefix(seq)
    assert cache.allocate(seq, seq.num_tokens - seq.num_computed_tokens)
    seq.num_computed_tokens = seq.num_tokens
    cache.on_tokens_computed(seq)
    seq.status = SeqStatus.FINISHED
    cache.free(seq)
    return seq


def _tree_keys(cache: RadixKVCacheManager) -> set[tuple[int, ...]]:
    return {n.key for n in cache._iter_nodes()}


def test_lru_leaves_go_first_and_a_cold_branch_goes_whole() -> None:
    cache = RadixKVCacheManager(num_blocks=16, block_size=BS)
    a = [1] * BS + [2] * BS + [3] * BS  # branch A: 3 blocks, used first (coldest)
    b = [1] * BS + [5] * BS  # branch B shares A's first block, used later
    _run(cache, 0, a)
    _run(cache, 1, b)
    assert len(_tree_keys(cache)) == 4 and cache.allocator.num_free == 12
    # two blocks: A's leaf, then A's middle block (it became an unreferenced leaf), not B's
    assert cache.evict(2) == 2
    assert _tree_keys(cache) == {tuple([1] * BS), tuple([5] * BS)}
    # then B's leaf, then the shared root block
    assert cache.evict(5) == 2 and not _tree_keys(cache)
    assert cache.allocator.num_free == 16 and cache.evictions == 4


def test_referenced_nodes_are_never_evicted() -> None:
    cache = RadixKVCacheManager(num_blocks=8, block_size=BS)
    _run(cache, 0, [7] * BS + [8] * BS)
    live = Sequence(1, "1", None, [7] * BS + [8] * BS + [9], SamplingParams(max_tokens=1), 0.0)
    assert cache.match_prefix(live) == 2 * BS  # pins both blocks
    assert cache.evict(8) == 0 and len(_tree_keys(cache)) == 2
    cache.free(live)
    assert cache.evict(8) == 2

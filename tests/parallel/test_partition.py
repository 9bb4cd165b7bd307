"""How heads, layers and micro-batches are split (pure functions; no processes)."""

from __future__ import annotations

import pytest

from infer.parallel.partition import (
    even_split,
    head_shard,
    max_local_kv_heads,
    split_unit,
    stage_layers,
)
from infer.parallel.runner import micro_batches


@pytest.mark.parametrize("nh,nkv", [(9, 3), (16, 8), (32, 8), (8, 2), (4, 1), (12, 12), (6, 6)])
@pytest.mark.parametrize("tp", [1, 2, 3, 4, 6])
def test_heads_cover_every_query_head_once_with_its_kv_head(nh: int, nkv: int, tp: int) -> None:
    try:
        shards = [head_shard(nh, nkv, tp, r) for r in range(tp)]
    except ValueError as e:
        assert "tp_size" in str(e) or "cannot split" in str(e)
        assert tp > nkv and (nh // nkv) * nkv < tp  # only when there are too few heads
        return
    seen = []
    group = nh // nkv
    for s in shards:
        assert s.num_q >= 1 and s.num_kv >= 1
        for q in range(s.q_start, s.q_start + s.num_q):
            seen.append(q)
            # the query head's KV head is among this rank's KV heads
            assert s.kv_start <= q // group < s.kv_start + s.num_kv
        assert s.num_q == s.num_kv * group or s.num_kv == 1  # whole groups unless replicated
    assert sorted(seen) == list(range(nh))
    assert max_local_kv_heads(nh, nkv, tp) == max(s.num_kv for s in shards)


def test_smollm2_tp2_is_six_plus_three() -> None:
    a, b = head_shard(9, 3, 2, 0), head_shard(9, 3, 2, 1)
    assert (a.num_q, a.num_kv, b.num_q, b.num_kv) == (3, 1, 6, 2) or (a.num_q, b.num_q) == (6, 3)


def test_kv_heads_replicated_when_fewer_than_ranks() -> None:
    shards = [head_shard(8, 2, 4, r) for r in range(4)]
    assert [s.kv_start for s in shards] == [0, 0, 1, 1]
    assert [s.num_q for s in shards] == [2, 2, 2, 2]


def test_even_split_units_and_errors() -> None:
    parts = [even_split(1536, 3, r, 128) for r in range(3)]
    assert sum(n for _, n in parts) == 1536 and all(a % 128 == 0 and n % 128 == 0 for a, n in parts)
    assert [a for a, _ in parts] == [0, parts[0][1], parts[0][1] + parts[1][1]]
    assert split_unit(1536, 2) == 128 and split_unit(49152, 3) == 128 and split_unit(7, 2) == 1
    with pytest.raises(ValueError, match="over 5 ranks"):
        even_split(4, 5, 0)


def test_stage_layers_are_contiguous_and_complete() -> None:
    for n, pp in [(30, 2), (30, 4), (2, 2), (7, 3)]:
        stages = [stage_layers(n, pp, r) for r in range(pp)]
        assert [i for s in stages for i in s] == list(range(n))
    with pytest.raises(ValueError, match="pp_size=3 exceeds"):
        stage_layers(2, 3, 0)


def test_micro_batches_balance_tokens_and_never_empty() -> None:
    assert micro_batches([5], 2) == [(0, 1)]
    assert micro_batches([], 2) == []
    assert micro_batches([1, 1, 1, 1], 2) == [(0, 2), (2, 4)]
    assert micro_batches([100, 1, 1, 1], 2) == [(0, 1), (1, 4)]
    g = micro_batches([3, 3, 3, 3, 3, 3], 3)
    assert g == [(0, 2), (2, 4), (4, 6)]
    for fed in ([1, 50, 2, 2, 9], [7] * 9, [1, 1]):
        for parts in (2, 3, 4):
            g = micro_batches(fed, parts)
            assert g[0][0] == 0 and g[-1][1] == len(fed) and len(g) <= parts
            assert all(b > a for a, b in g) and all(g[i][1] == g[i + 1][0] for i in range(len(g) - 1))

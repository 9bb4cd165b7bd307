"""How a model's dimensions are split over the tensor-parallel ranks (pure functions).

Heads are split by whole KV groups (a query head always lives with its KV head). When there
are fewer KV heads than ranks, each KV head is replicated on the ranks that share its group
and the group's query heads are split among them. Splits need not be even: SmolLM2's 9 query
heads / 3 KV heads over 2 ranks give 6 + 3 query heads (2 + 1 KV heads).
"""

from __future__ import annotations

from dataclasses import dataclass


def even_split(n: int, parts: int, rank: int, unit: int = 1) -> tuple[int, int]:
    """(start, size) of ``rank``'s contiguous share of ``n`` items cut into ``parts`` pieces
    whose boundaries are multiples of ``unit`` (the last piece takes the remainder)."""
    if n % unit:
        raise ValueError(f"cannot split {n} in units of {unit}")
    units = n // unit
    if units < parts:
        raise ValueError(f"cannot split {n} items ({units} units of {unit}) over {parts} ranks")
    a, b = units * rank // parts, units * (rank + 1) // parts
    return a * unit, (b - a) * unit


def split_unit(n: int, parts: int, prefer: tuple[int, ...] = (128, 64, 32, 16, 8, 1)) -> int:
    """The largest preferred unit dividing ``n`` that still leaves every rank at least one
    unit (so quantization groups and kernel panels stay whole where they can)."""
    for u in prefer:
        if n % u == 0 and n // u >= parts:
            return u
    raise ValueError(f"cannot split {n} over {parts} ranks")


@dataclass(frozen=True)
class HeadShard:
    """This rank's heads: query heads [q_start, q_start + num_q), KV heads
    [kv_start, kv_start + num_kv) of the full model."""

    q_start: int
    num_q: int
    kv_start: int
    num_kv: int


def head_shard(num_heads: int, num_kv_heads: int, tp_size: int, tp_rank: int) -> HeadShard:
    """Assign heads to ``tp_rank`` (see the module docstring); raises ValueError naming the
    sizes when no valid split exists."""
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    group = num_heads // num_kv_heads  # query heads per KV head
    if tp_size <= num_kv_heads:
        kv0, nkv = even_split(num_kv_heads, tp_size, tp_rank)
        return HeadShard(kv0 * group, nkv * group, kv0, nkv)
    # more ranks than KV heads: ranks [r0, r1) share KV head g and split its query heads
    g = tp_rank * num_kv_heads // tp_size
    sharers = [r for r in range(tp_size) if r * num_kv_heads // tp_size == g]
    if group < len(sharers):
        raise ValueError(
            f"tp_size={tp_size} is too large for num_heads={num_heads}, num_kv_heads="
            f"{num_kv_heads}: KV head {g} has {group} query heads for {len(sharers)} ranks"
        )
    q0, nq = even_split(group, len(sharers), sharers.index(tp_rank))
    return HeadShard(g * group + q0, nq, g, 1)


def max_local_kv_heads(num_heads: int, num_kv_heads: int, tp_size: int) -> int:
    """The most KV heads any rank holds: sizes the KV memory identically on every rank (the
    schedulers of all ranks must agree on the number of blocks)."""
    return max(head_shard(num_heads, num_kv_heads, tp_size, r).num_kv for r in range(tp_size))


def stage_layers(num_layers: int, pp_size: int, pp_rank: int) -> range:
    """Contiguous layers of pipeline stage ``pp_rank``, as even as the count allows
    (first stage: embedding; last stage: final norm and LM head)."""
    if num_layers < pp_size:
        raise ValueError(f"pp_size={pp_size} exceeds the model's {num_layers} layers")
    start, size = even_split(num_layers, pp_size, pp_rank)
    return range(start, start + size)

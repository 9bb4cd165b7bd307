"""AttentionBackend protocol and the per-step metadata every backend receives.

Shape legend: T = tokens scheduled this step (all sequences packed), B = sequences,
Hq/Hk = query/kv heads, D = head dim, NB = KV blocks, BS = block size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

#: longest query run (pending token + drafts) that joins the batched decode group
MAX_GROUP_QUERIES = 32


@dataclass
class SeqSlice:
    """One sequence's part of a step: ``num_new`` tokens after ``num_cached`` cached ones."""

    num_cached: int
    num_new: int
    block_table: list[int]


@dataclass
class AttentionMetadata:
    """Per-step tensors shared by all layers (built once by ``plan``).

    Sequences are ordered decodes first (num_new == 1, or 1 + drafts when speculating), then
    prefill/extend chunks. ``num_decodes``: leading sequences with one query each;
    ``num_decode_group``: leading sequences with a cached prefix and at most
    ``MAX_GROUP_QUERIES`` queries (decodes and verify rows), attended as one batch.
    slot_mapping: int64 [T] cache slot (block*BS + offset) of each new token.
    query_start_loc: int32 [B+1] prefix sums of new tokens per sequence.
    context_lens: int32 [B] cached + new tokens per sequence.
    block_tables: int32 [B, max_blocks] (padded with 0).
    """

    slot_mapping: torch.Tensor
    query_start_loc: torch.Tensor
    context_lens: torch.Tensor
    block_tables: torch.Tensor
    query_lens_list: list[int]
    context_lens_list: list[int]
    block_size: int
    num_decodes: int
    num_decode_group: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens_list)


def build_metadata(seqs: list[SeqSlice], block_size: int, device: torch.device) -> AttentionMetadata:
    """Generic metadata construction from the scheduled slices (host lists -> tensors)."""
    slots: list[int] = []
    qlens, clens = [], []
    for s in seqs:
        for p in range(s.num_cached, s.num_cached + s.num_new):
            slots.append(s.block_table[p // block_size] * block_size + p % block_size)
        qlens.append(s.num_new)
        clens.append(s.num_cached + s.num_new)
    width = max(max((len(s.block_table) for s in seqs), default=1), 1)
    # one tensor from padded lists: a torch.tensor call per row cost ~9 us each, every step
    # (the view gives a step without sequences its [0, width] shape)
    bt = torch.tensor([[*s.block_table, *([0] * (width - len(s.block_table)))] for s in seqs],
                      dtype=torch.int32).view(len(seqs), width)
    qsl = [0]
    for q in qlens:
        qsl.append(qsl[-1] + q)
    num_decodes = 0
    for q in qlens:
        if q != 1:
            break
        num_decodes += 1
    # the decode group: leading sequences that are decodes, or verify rows (the pending token
    # plus drafts over a cached prefix): short multi-query sequences attended in one batch
    num_group = 0
    for s in seqs:
        if not (s.num_new == 1 or (s.num_cached > 0 and s.num_new <= MAX_GROUP_QUERIES)):
            break
        num_group += 1
    return AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
        context_lens=torch.tensor(clens, dtype=torch.int32, device=device),
        block_tables=bt.to(device),
        query_lens_list=qlens,
        context_lens_list=clens,
        block_size=block_size,
        num_decodes=num_decodes,
        num_decode_group=num_group,
    )


class AttentionBackend(Protocol):
    """Writes new k/v into the paged cache, then attends (causal within the sequence)."""

    name: str

    def bind(self, kv: Any, device: torch.device) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Bind this backend instance to one model's KV geometry (``runner.KVSpec``: blocks,
        block size, kv heads, head dim, storage dtype) and device; returns the shapes of one
        layer's (k_cache, v_cache). Optional: without it the runner uses [NB, BS, Hk, D] for
        both. Each model (target, draft) gets its own backend instance."""
        ...

    def plan(self, seqs: list[SeqSlice], block_size: int, device: torch.device) -> AttentionMetadata:
        """Build the step's metadata once; shared by every layer."""
        ...

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        metadata: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hk, D]; kv_cache = (k_cache, v_cache) each [NB, BS, Hk, D],
        written in place at ``metadata.slot_mapping``. Returns [T, Hq, D] in q's dtype."""
        ...

"""Continuous batching at iteration level.

Each step: running decodes first (their pending token plus up to k draft slots each), then
chunks of prefills (running partial prefills, then waiting requests in policy order) until
the token budget is spent. When the KV cache is full, the most recently admitted running
sequence is preempted by recompute: its blocks are freed and it re-enters the front of the
queue with its generated tokens kept, so its result does not change.

Draft slots are reserved here (KV for ``1 + k`` tokens, counted against the budget) and
filled by the proposer afterwards; whatever the verifier rejects is released at commit
(``cache.trim``), so only accepted tokens ever count as computed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from infer.cache.paged import KVCacheManager
from infer.sequence import SeqStatus, Sequence

#: (decoding sequences, running batch size) -> draft slots wanted per sequence
DraftSlotsFn = Callable[[list[Sequence], int], list[int]]


@dataclass
class ScheduledSeq:
    """One sequence's share of a step: ``num_new`` committed tokens starting at
    ``seq.num_computed_tokens`` (a prefill chunk, or the pending token of a decode), then the
    ``draft`` tokens proposed into the ``num_slots`` reserved slots (decodes only)."""

    seq: Sequence
    num_new: int
    num_slots: int = 0
    decode: bool = False  # scheduled as a decode (pending token + draft slots), not a chunk
    draft: list[int] = field(default_factory=list)
    draft_probs: torch.Tensor | None = None

    @property
    def completes(self) -> bool:
        """After this chunk every committed token of seq is computed, so the step samples
        (or verifies) what follows."""
        return self.seq.num_computed_tokens + self.num_new == self.seq.num_tokens

    @property
    def num_fed(self) -> int:
        """Tokens this step feeds the model for seq (committed + draft)."""
        return self.num_new + len(self.draft)

    @property
    def token_ids(self) -> list[int]:
        """The ids fed: committed tokens from ``num_computed_tokens`` on, then the draft."""
        start = self.seq.num_computed_tokens
        return self.seq.tokens[start : start + self.num_new] + self.draft


def no_drafts(seqs: list[Sequence], batch_size: int) -> list[int]:
    return [0] * len(seqs)


class Scheduler:
    """FCFS (or longest-prefix-match) continuous-batching scheduler with chunked prefill,
    recompute preemption and draft-slot reservation.

    Args:
        cache: the KV cache manager.
        max_num_seqs: most running sequences.
        max_num_batched_tokens: token budget per step (drafts included).
        chunked_prefill: split prompts across steps; without it a prompt is admitted only
            when it fits the budget whole (longer prompts are refused at admission).
        policy: "fcfs" or "lpm" (longest cached prefix first; needs a prefix cache).
        max_model_len: context limit (draft slots never reach past it).
        lpm_max_wait_steps: under lpm, a request that waited this many steps goes first
            (aging, so cold requests are not starved by a stream of cache hits).
    """

    def __init__(
        self,
        cache: KVCacheManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        chunked_prefill: bool = True,
        policy: str = "fcfs",
        max_model_len: int | None = None,
        lpm_max_wait_steps: int = 64,
    ) -> None:
        if policy not in ("fcfs", "lpm"):
            raise ValueError(f"unknown schedule policy {policy!r}; allowed: fcfs, lpm")
        if policy == "lpm" and not getattr(cache, "reuses_prefixes", False):
            raise ValueError("schedule_policy=lpm needs a prefix cache (attention=radix)")
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be >= 1")
        if lpm_max_wait_steps < 1:
            raise ValueError(f"lpm_max_wait_steps must be >= 1, got {lpm_max_wait_steps}")
        self.policy = policy
        self.cache = cache
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.chunked_prefill = chunked_prefill
        self.max_model_len = max_model_len
        self.lpm_max_wait_steps = lpm_max_wait_steps
        self.draft_slots: DraftSlotsFn = no_drafts
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._step = 0
        self._enqueued: dict[int, int] = {}  # seq_id -> step it (re)entered the queue

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)
        self._enqueued[seq.seq_id] = self._step

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence) -> None:
        """Remove a finished (failed, aborted) sequence and release its cache."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._enqueued.pop(seq.seq_id, None)
        self.cache.free(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.cache.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SeqStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
        self._enqueued[seq.seq_id] = self._step
        self.on_preempt(seq)

    def on_preempt(self, seq: Sequence) -> None:
        """Hook: the engine tells the proposer to drop its state for seq."""

    def _slot_limit(self, seq: Sequence) -> int:
        """Most draft tokens seq can take: the pending token, k drafts and the bonus token
        must stay within max_model_len and max_tokens."""
        room = seq.params.max_tokens - len(seq.output_token_ids) - 1
        if self.max_model_len is not None:
            room = min(room, self.max_model_len - seq.num_tokens - 1)
        return max(room, 0)

    def schedule(self) -> list[ScheduledSeq]:
        """Pick this step's work; returns decodes first, then prefill chunks."""
        self._step += 1
        budget = self.max_num_batched_tokens
        decodes: list[ScheduledSeq] = []
        prefills: list[ScheduledSeq] = []
        scheduled: set[int] = set()

        dec = [s for s in self.running if not s.in_prefill]
        wants = self.draft_slots(dec, self._tokens_anyway(len(dec))) if dec else []
        for seq, want in zip(dec, wants):
            if budget < 1 or seq not in self.running:
                continue
            k = max(0, min(int(want), self._slot_limit(seq)))
            if k > budget - 1:
                if seq.params.seeded_sampling and 1 + k <= self.max_num_batched_tokens:
                    # a seeded sampled request keeps its k (its random stream must not depend
                    # on the batch): it waits for a step with room instead of drafting less
                    continue
                k = max(budget - 1, 0)
            if not self._reserve(seq, 1 + k, scheduled):
                continue  # seq itself was preempted
            decodes.append(ScheduledSeq(seq, 1, num_slots=k, decode=True))
            scheduled.add(seq.seq_id)
            budget -= 1 + k

        for seq in [s for s in self.running if s.in_prefill]:
            if budget < 1 or seq not in self.running:
                continue
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if not self._reserve(seq, n, scheduled):
                continue
            prefills.append(ScheduledSeq(seq, n))
            scheduled.add(seq.seq_id)
            budget -= n

        if self.policy == "lpm" and len(self.waiting) > 1:
            self._order_lpm()
        # lpm: a request whose first block is being prefilled right now by another one
        # waits a step and then hits the cache instead of recomputing the shared prefix
        bs = self.cache.block_size
        inflight = (
            {tuple(s.tokens[:bs]) for s in self.running if s.in_prefill and s.num_tokens > bs}
            if self.policy == "lpm" else set()
        )
        deferred: list[Sequence] = []
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting.popleft()
            key = tuple(seq.tokens[:bs])
            if (
                key in inflight and seq.num_computed_tokens == 0
                and self.cache.peek_prefix(seq) == 0 and not self._starved(seq)
            ):
                deferred.append(seq)
                continue
            if seq.num_computed_tokens == 0:
                seq.num_computed_tokens = self.cache.match_prefix(seq)
            remaining = seq.num_tokens - seq.num_computed_tokens
            n = min(remaining, budget)
            # without chunked prefill a prompt runs whole; a preempted sequence longer than
            # the whole budget is recomputed in chunks (its result does not depend on it)
            must_wait = (
                n < remaining and not self.chunked_prefill
                and seq.num_tokens <= self.max_num_batched_tokens
            )
            if must_wait or not self.cache.allocate(seq, n):
                # release the prefix it matched: pinned blocks it cannot use yet would keep
                # running sequences from growing (and could wedge the engine)
                self.cache.free(seq)
                seq.num_computed_tokens = 0
                self.waiting.appendleft(seq)
                break  # no room: wait for running sequences to finish
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            self._enqueued.pop(seq.seq_id, None)
            prefills.append(ScheduledSeq(seq, n))
            scheduled.add(seq.seq_id)
            budget -= n
            if self.policy == "lpm" and seq.num_tokens > bs:
                inflight.add(key)
        self.waiting.extendleft(reversed(deferred))
        return decodes + prefills

    def _tokens_anyway(self, num_decodes: int) -> int:
        """Tokens this step computes without drafts: one per decode plus the prefill work
        queued behind them, capped by the budget (what a draft slot is weighed against)."""
        pending = sum(s.num_tokens - s.num_computed_tokens for s in self.running if s.in_prefill)
        room = self.max_num_seqs - len(self.running)
        pending += sum(s.num_tokens for s in list(self.waiting)[: max(room, 0)])
        return num_decodes + min(pending, max(self.max_num_batched_tokens - num_decodes, 0))

    def _starved(self, seq: Sequence) -> bool:
        return self._step - self._enqueued.get(seq.seq_id, self._step) >= self.lpm_max_wait_steps

    def _order_lpm(self) -> None:
        """Longest cached prefix first, so requests sharing a hot prefix run together while
        it is resident; requests that waited ``lpm_max_wait_steps`` go first, oldest first.
        The sort is stable: FCFS among equals."""
        peek = self.cache.peek_prefix

        def key(s: Sequence) -> tuple[int, int]:
            if self._starved(s):
                return (0, self._enqueued.get(s.seq_id, 0))
            return (1, -peek(s))

        self.waiting = deque(sorted(self.waiting, key=key))

    def _reserve(self, seq: Sequence, n: int, scheduled: set[int]) -> bool:
        """Allocate n slots for a running seq, preempting the latest-admitted others."""
        while not self.cache.allocate(seq, n):
            victims = [s for s in reversed(self.running) if s.seq_id not in scheduled and s is not seq]
            if not victims:
                self._preempt(seq)
                return False
            self._preempt(victims[0])
        return True

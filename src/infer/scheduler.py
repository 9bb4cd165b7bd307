"""Continuous batching at iteration level.

Each step: running decodes first (one token each), then chunks of prefills (running
partial prefills, then waiting requests in policy order) until the token budget is spent.
When the KV cache is full, the most recently admitted running sequence is preempted by
recompute: its blocks are freed and it re-enters the front of the queue with its
generated tokens kept, so its result does not change.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from infer.cache.paged import KVCacheManager
from infer.sequence import Sequence, SeqStatus


@dataclass
class ScheduledSeq:
    """``num_new`` tokens of ``seq`` starting at ``seq.num_computed_tokens``."""

    seq: Sequence
    num_new: int

    @property
    def completes(self) -> bool:
        """After this chunk every token of seq is computed, so a next token is sampled."""
        return self.seq.num_computed_tokens + self.num_new == self.seq.num_tokens


class Scheduler:
    """FCFS continuous-batching scheduler with chunked prefill and recompute preemption."""

    def __init__(
        self,
        cache: KVCacheManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        chunked_prefill: bool = True,
        policy: str = "fcfs",
    ) -> None:
        if policy not in ("fcfs", "lpm"):
            raise ValueError(f"unknown schedule policy {policy!r}; allowed: fcfs, lpm")
        if policy == "lpm" and not hasattr(cache, "peek_prefix"):
            raise ValueError("schedule_policy=lpm needs a prefix cache (attention=radix)")
        self.policy = policy
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be >= 1")
        self.cache = cache
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.chunked_prefill = chunked_prefill
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence) -> None:
        """Remove a finished (or failed) sequence and release its cache."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.cache.free(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.cache.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SeqStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def schedule(self) -> list[ScheduledSeq]:
        """Pick this step's work; returns decodes first, then prefill chunks."""
        budget = self.max_num_batched_tokens
        decodes: list[ScheduledSeq] = []
        prefills: list[ScheduledSeq] = []
        scheduled: set[int] = set()

        for seq in [s for s in self.running if not s.in_prefill]:
            if budget < 1 or seq not in self.running:
                continue
            if not self._reserve(seq, 1, scheduled):
                continue  # seq itself was preempted
            decodes.append(ScheduledSeq(seq, 1))
            scheduled.add(seq.seq_id)
            budget -= 1

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
            # longest cached prefix first: requests that share a hot prefix run together
            # while it is resident (stable sort keeps FCFS among equals)
            peek = self.cache.peek_prefix  # type: ignore[attr-defined]
            self.waiting = deque(sorted(self.waiting, key=lambda s: -peek(s)))
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
                and self.cache.peek_prefix(seq) == 0  # type: ignore[attr-defined]
            ):
                deferred.append(seq)
                continue
            if seq.num_computed_tokens == 0:
                seq.num_computed_tokens = self.cache.match_prefix(seq)
            remaining = seq.num_tokens - seq.num_computed_tokens
            n = min(remaining, budget)
            if (n < remaining and not self.chunked_prefill) or not self.cache.allocate(seq, n):
                self.waiting.appendleft(seq)
                break  # no room: wait for running sequences to finish
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            prefills.append(ScheduledSeq(seq, n))
            scheduled.add(seq.seq_id)
            budget -= n
            if self.policy == "lpm" and seq.num_tokens > bs:
                inflight.add(key)
        self.waiting.extendleft(reversed(deferred))
        return decodes + prefills

    def _reserve(self, seq: Sequence, n: int, scheduled: set[int]) -> bool:
        """Allocate n slots for a running seq, preempting the latest-admitted others."""
        while not self.cache.allocate(seq, n):
            victims = [s for s in reversed(self.running) if s.seq_id not in scheduled and s is not seq]
            if not victims:
                self._preempt(seq)
                return False
            self._preempt(victims[0])
        return True

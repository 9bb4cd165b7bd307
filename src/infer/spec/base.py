"""Proposer protocol; ``NoProposer`` makes plain decoding the k=0 case of the loop.

The engine calls, once per step:
  1. ``scheduler.schedule()`` reserves KV for ``1 + k`` tokens per decoding sequence
     (k = ``num_slots[i]``, already clamped to max_model_len / max_tokens / the adaptive policy);
  2. ``proposer.propose(seqs, num_slots)`` returns at most ``num_slots[i]`` draft tokens per
     sequence, continuing ``seq.tokens`` (prompt + committed output; its last token is the
     pending one whose KV is not yet computed);
  3. the target verifies ``[pending] + draft`` in one forward;
  4. ``proposer.commit(seqs, num_accepted)`` after the sequences advanced (their ``tokens`` now
     end with the accepted drafts and the bonus token);
  5. ``proposer.free(seq)`` when a sequence finishes, is aborted or preempted (drop its state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from infer.sequence import Sequence


@dataclass
class Draft:
    """Proposed tokens per sequence (possibly empty), aligned with the ``seqs`` given to
    ``propose``, and their draft probabilities when the proposer is probabilistic:
    ``probs[i]`` float32 [len(tokens[i]), vocab] (the draft's processed distribution each
    token was drawn from) or None for a point-mass draft (q = one-hot)."""

    tokens: list[list[int]]
    probs: list[torch.Tensor | None] | None = None

    def probs_of(self, i: int) -> torch.Tensor | None:
        return None if self.probs is None else self.probs[i]


class Proposer(Protocol):
    """Proposes draft tokens for the target model to verify."""

    #: most draft tokens per sequence per step (0 = never speculates)
    num_tokens: int

    def propose(self, seqs: list[Sequence], num_slots: list[int]) -> Draft:
        """Up to ``num_slots[i]`` draft tokens continuing ``seqs[i].tokens``."""
        ...

    def commit(self, seqs: list[Sequence], num_accepted: list[int]) -> None:
        """Told how many draft tokens each sequence accepted (its tokens already advanced)."""
        ...

    def free(self, seq: Sequence) -> None:
        """seq finished, was aborted or preempted: release whatever the proposer keeps for it."""
        ...


class NoProposer:
    """``spec=none``: proposes nothing."""

    num_tokens = 0

    def propose(self, seqs: list[Sequence], num_slots: list[int]) -> Draft:
        return Draft([[] for _ in seqs])

    def commit(self, seqs: list[Sequence], num_accepted: list[int]) -> None:
        return None

    def free(self, seq: Sequence) -> None:
        return None

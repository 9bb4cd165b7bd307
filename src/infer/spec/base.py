"""Proposer protocol; ``NoProposer`` makes plain decoding the k=0 case of the loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from infer.sequence import Sequence


@dataclass
class Draft:
    """Proposed tokens per sequence (possibly empty) and their draft probabilities
    (float32 [num_tokens, vocab] per sequence) when the proposer is probabilistic."""

    tokens: list[list[int]]
    probs: list[torch.Tensor] | None = None


class Proposer(Protocol):
    """Proposes draft tokens for the target model to verify."""

    def propose(self, seqs: list[Sequence]) -> Draft:
        """Draft tokens for each sequence of the step (empty lists = none)."""
        ...

    def commit(self, seqs: list[Sequence], num_accepted: list[int]) -> None:
        """Told how many draft tokens each sequence accepted."""
        ...


class NoProposer:
    """``spec=none``: proposes nothing."""

    def propose(self, seqs: list[Sequence]) -> Draft:
        return Draft([[] for _ in seqs])

    def commit(self, seqs: list[Sequence], num_accepted: list[int]) -> None:
        return None

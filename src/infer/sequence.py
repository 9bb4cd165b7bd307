"""Per-request state: tokens, progress through prefill, outputs, finish reason."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from infer.sampling_params import SamplingParams


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Logprob:
    """Log-probability of one token id (and its rank among the vocabulary)."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass(eq=False)  # identity equality: list membership must not compare fields
class Sequence:
    """One generation stream. ``tokens`` = prompt + output; the KV of the first
    ``num_computed_tokens`` of them is in the cache."""

    seq_id: int
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival: float
    generator: torch.Generator | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    status: SeqStatus = SeqStatus.WAITING
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    output_text: str = ""
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    prompt_logprobs: list[dict[int, Logprob] | None] = field(default_factory=list)
    first_token_time: float | None = None
    token_times: list[float] = field(default_factory=list)
    num_preemptions: int = 0
    num_cached_prompt_tokens: int = 0
    #: length of the output text already searched for stop strings
    stop_checked_len: int = 0
    #: speculative decoding: draft tokens proposed / accepted, and verify steps that had drafts
    spec_drafted: int = 0
    spec_accepted: int = 0
    spec_steps: int = 0

    @property
    def tokens(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status == SeqStatus.FINISHED

    @property
    def in_prefill(self) -> bool:
        """True while more than one token is still uncomputed (prompt or recompute)."""
        return self.num_tokens - self.num_computed_tokens > 1

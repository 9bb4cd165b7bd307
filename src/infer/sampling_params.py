"""SamplingParams: what a request asks of the sampler, validated on construction."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                 "frequency_penalty")
_INT_FIELDS = ("n", "top_k", "max_tokens", "min_tokens", "seed", "logprobs", "prompt_logprobs")
_OPTIONAL_FIELDS = ("seed", "logprobs", "prompt_logprobs")
#: temperatures below this are treated as greedy (dividing logits by them overflows)
SAMPLING_EPS = 1e-5
#: seeds are 64-bit (torch.Generator); sequence i of an n>1 request uses (seed + i) mod 2**64
MAX_SEED = 2**64 - 1


def _is_int(v: object) -> bool:
    return isinstance(v, (int, numbers.Integral)) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


@dataclass
class SamplingParams:
    """Per-request sampling controls (vLLM-shaped).

    temperature 0 (or anything below 1e-5) means greedy. top_p in (0, 1], top_k -1 or 0 disables, min_p in [0, 1].
    Penalties follow vLLM: repetition (>0, 1 = off) over prompt+output tokens, presence and
    frequency (in [-2, 2]) over output tokens. ``seed`` makes the sample stream a function of
    the request alone (not of the batch it runs in). ``logprobs``/``prompt_logprobs``: how many
    top alternatives to return per generated / prompt token (None = none).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int = 16
    min_tokens: int = 0
    stop: list[str] | str | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        for name in ("stop", "stop_token_ids"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, (list, tuple)):
                raise ValueError(f"SamplingParams.{name}={v!r} is invalid; allowed: a list (or None)")
            setattr(self, name, list(v or []))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the bad field and the allowed range."""

        def bad(name: str, allowed: str) -> None:
            raise ValueError(f"SamplingParams.{name}={getattr(self, name)!r} is invalid; allowed: {allowed}")

        # types first, so the range checks below never see a str, a bool, NaN or inf
        for name in _FLOAT_FIELDS:
            v = getattr(self, name)
            if not _is_real(v) or not math.isfinite(v):
                bad(name, "a finite number")
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if not (v is None and name in _OPTIONAL_FIELDS) and not _is_int(v):
                bad(name, "an integer" + (" or None" if name in _OPTIONAL_FIELDS else ""))
        if any(not _is_int(t) or t < 0 for t in self.stop_token_ids):
            bad("stop_token_ids", "a list of token ids (integers >= 0)")
        if not _is_int(self.n) or self.n < 1:
            bad("n", "an integer >= 1")
        if self.temperature < 0:
            bad("temperature", ">= 0 (0 means greedy)")
        if not (0.0 < self.top_p <= 1.0):
            bad("top_p", "(0, 1]")
        if not _is_int(self.top_k) or self.top_k < -1:
            bad("top_k", "-1 or 0 (disabled) or a positive integer")
        if not (0.0 <= self.min_p <= 1.0):
            bad("min_p", "[0, 1]")
        if self.repetition_penalty <= 0:
            bad("repetition_penalty", "> 0 (1 disables)")
        if not (-2.0 <= self.presence_penalty <= 2.0):
            bad("presence_penalty", "[-2, 2]")
        if not (-2.0 <= self.frequency_penalty <= 2.0):
            bad("frequency_penalty", "[-2, 2]")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            bad("max_tokens", "an integer >= 1")
        if self.min_tokens < 0 or self.min_tokens > self.max_tokens:
            bad("min_tokens", "0..max_tokens")
        if self.logprobs is not None and self.logprobs < 0:
            bad("logprobs", "None or an integer >= 0")
        if self.prompt_logprobs is not None and self.prompt_logprobs < 0:
            bad("prompt_logprobs", "None or an integer >= 0")
        if self.seed is not None and not (0 <= self.seed <= MAX_SEED):
            bad("seed", f"None or an integer in [0, {MAX_SEED}]")
        if any(not isinstance(s, str) or not s for s in self.stop):  # type: ignore[union-attr]
            bad("stop", "non-empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS

    @property
    def seeded_sampling(self) -> bool:
        """A seeded, sampled request: its tokens must be a function of the request alone, so
        speculation gives it a fixed draft length whatever the batch."""
        return self.seed is not None and not self.greedy

    @property
    def truncates(self) -> bool:
        """Whether top-k, top-p or min-p restricts the distribution (rows that do not are
        left untouched by the truncation mask)."""
        return self.top_k > 0 or self.top_p < 1.0 or self.min_p > 0.0

    @property
    def uses_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

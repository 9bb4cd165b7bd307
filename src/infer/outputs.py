"""Request-level results returned by the engine and LLM.generate (vLLM-shaped)."""

from __future__ import annotations

from dataclasses import dataclass, field

from infer.sequence import Logprob


@dataclass
class CompletionOutput:
    """One sample of a request. token_ids include a final EOS/stop token when one ended it."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None  # "stop" | "length" | "error" | None while running
    stop_reason: str | int | None = None


@dataclass
class RequestOutput:
    """All samples of one request plus its prompt and timing."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[dict[int, Logprob] | None] | None
    outputs: list[CompletionOutput]
    finished: bool
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)

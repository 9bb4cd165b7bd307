"""Request bodies of the OpenAI-compatible endpoints and their mapping onto SamplingParams.

Bodies are validated strictly (a string where a number belongs is a 400, not a coercion).
Unknown keys are ignored, as OpenAI clients send fields this server has no use for (``user``).
Fields beyond OpenAI's (``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens``,
``ignore_eos``, ``stop_token_ids``, ...) are accepted as the vLLM-style extensions they are.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from infer.sampling_params import SamplingParams


class APIError(Exception):
    """An error answered to the client in OpenAI's shape: ``{"error": {message, type, param,
    code}}`` with HTTP ``status``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 type: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.type, self.code = message, param, status, type, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Body):
    include_usage: bool = False  # a last chunk with token counts and no choices


class _SamplingFields(_Body):
    """Fields shared by both endpoints."""

    model: str | None = None
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None
    # extensions (vLLM-style)
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True


class CompletionRequest(_SamplingFields):
    """POST /v1/completions. ``prompt``: a string, a list of strings (one choice group per
    prompt), a list of token ids, or a list of token-id lists."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_SamplingFields):
    """POST /v1/chat/completions: ``messages`` are rendered with the model's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None


def message_text(m: ChatMessage) -> str:
    """The text of a message; list content must be text parts only (no images here)."""
    if m.content is None:
        return ""
    if isinstance(m.content, str):
        return m.content
    parts = []
    for p in m.content:
        if p.get("type") != "text" or not isinstance(p.get("text"), str):
            raise APIError("only text content parts are supported", param="messages")
        parts.append(p["text"])
    return "".join(parts)


def reject_unsupported(req: _SamplingFields) -> None:
    """Refuse (400) OpenAI features the engine does not implement, rather than ignore them."""
    if req.logit_bias:
        raise APIError("logit_bias is not supported", param="logit_bias")
    if isinstance(req, CompletionRequest):
        if req.suffix:
            raise APIError("suffix is not supported", param="suffix")
        if req.best_of is not None and req.best_of != req.n:
            raise APIError("best_of must equal n (no server-side ranking)", param="best_of")
    if isinstance(req, ChatCompletionRequest):
        if req.tools:
            raise APIError("tools are not supported", param="tools")
        if req.response_format and req.response_format.get("type", "text") != "text":
            raise APIError("only response_format type 'text' is supported", param="response_format")
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError("top_logprobs needs logprobs=true", param="top_logprobs")


_PARAM_RE = re.compile(r"SamplingParams\.(\w+)")


def param_of(err: ValueError, default: str | None = None) -> str | None:
    """The request field a SamplingParams/engine ValueError names."""
    m = _PARAM_RE.search(str(err))
    if m:
        return m.group(1)
    if "prompt" in str(err):
        return default or "prompt"
    return default


def to_sampling_params(req: CompletionRequest | ChatCompletionRequest, prompt_len: int,
                       max_model_len: int) -> SamplingParams:
    """Map a request body onto SamplingParams. Raises APIError(400) naming the field."""
    chat = isinstance(req, ChatCompletionRequest)
    max_tokens = (req.max_completion_tokens or req.max_tokens) if chat else req.max_tokens
    if max_tokens is None:  # as much as the context allows
        max_tokens = max(1, max_model_len - prompt_len)
    if chat:
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        prompt_logprobs = None
    else:
        logprobs = req.logprobs
        prompt_logprobs = req.logprobs if (req.echo and req.logprobs is not None) else None
    kw: dict[str, Any] = {
        "n": req.n, "max_tokens": max_tokens, "min_tokens": req.min_tokens, "stop": req.stop,
        "seed": req.seed, "logprobs": logprobs, "prompt_logprobs": prompt_logprobs,
        "ignore_eos": req.ignore_eos, "stop_token_ids": list(req.stop_token_ids or []),
        "include_stop_str_in_output": req.include_stop_str_in_output,
        "skip_special_tokens": req.skip_special_tokens,
    }
    for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                 "presence_penalty", "frequency_penalty"):
        v = getattr(req, name)
        if v is not None:
            kw[name] = v
    try:
        return SamplingParams(**kw)
    except ValueError as e:
        param = param_of(e)
        if chat and param == "logprobs":
            param = "top_logprobs"
        if chat and param == "max_tokens" and req.max_completion_tokens is not None:
            param = "max_completion_tokens"
        raise APIError(str(e).replace("SamplingParams.", ""), param=param) from e

"""The two generation endpoints: /v1/completions and /v1/chat/completions.

Each prompt becomes one engine request with ``n`` samples; tokenization, SamplingParams and
rendering happen on the engine thread (``build``). Responses follow OpenAI's shapes; streams
are server-sent events, one chunk per choice per step that produced text, then ``[DONE]``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from infer.serve.engine_loop import EngineLoop, Event, NewRequest
from infer.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    message_text,
    reject_unsupported,
    to_sampling_params,
)
from infer.serve.render import ChoiceUpdate, Renderer, completion_logprobs
from infer.serve.requests import RequestGroup


def _prompts(p: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    if isinstance(p, str):
        return [p]
    if not p:
        raise APIError("prompt must not be empty", param="prompt")
    if all(isinstance(x, int) for x in p):
        return [list(p)]  # type: ignore[arg-type]
    return list(p)  # type: ignore[arg-type]


def _completion_build(body: CompletionRequest, prompt: str | list[int]) -> Callable[[Any], NewRequest]:
    def build(engine: Any) -> NewRequest:
        tok = engine.tokenizer
        if isinstance(prompt, str):
            # the tokenizer's own default for special tokens (a BOS where the family wants
            # one), as LLM.generate and other OpenAI-compatible servers encode completions
            text, ids = prompt, tok.encode(prompt)
        else:
            text, ids = None, list(prompt)
        params = to_sampling_params(body, len(ids), engine.max_model_len)
        r = Renderer(tok, body.n, body.stream, "completion" if body.logprobs is not None else None,
                     body.logprobs or 0, body.echo, text, params.stop, body.skip_special_tokens)
        return NewRequest(text, ids, params, r)
    return build


def _chat_build(body: ChatCompletionRequest) -> Callable[[Any], NewRequest]:
    messages = [{"role": m.role, "content": message_text(m)} for m in body.messages]

    def build(engine: Any) -> NewRequest:
        tok = engine.tokenizer
        if not getattr(tok, "chat_template", None):
            raise APIError("this model's tokenizer has no chat template; use /v1/completions",
                           param="messages")
        out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = list(out["input_ids"] if hasattr(out, "keys") else out)
        params = to_sampling_params(body, len(ids), engine.max_model_len)
        r = Renderer(tok, body.n, body.stream, "chat" if body.logprobs else None,
                     body.top_logprobs or 0, stop=params.stop, skip_special_tokens=body.skip_special_tokens)
        return NewRequest(None, ids, params, r)
    return build


def _check_error(ev: Event) -> None:
    out = ev.output
    reasons = {c.finish_reason for c in out.outputs}
    if "error" in reasons or out.error:
        raise APIError(f"the request failed in the engine: {out.error}", status=500, type="server_error")
    if "abort" in reasons:
        raise APIError("the request was aborted (server shutting down)", status=503, type="server_error")


class Handlers:
    """Endpoint implementations bound to one engine loop and model name."""

    def __init__(self, loop: EngineLoop, model_name: str) -> None:
        self.loop = loop
        self.model = model_name

    async def completions(self, body: CompletionRequest, request: Request) -> Any:
        reject_unsupported(body)
        prompts = _prompts(body.prompt)
        # a stream notices a gone client itself (the response's disconnect listener cancels it)
        group = RequestGroup(self.loop, None if body.stream else request.is_disconnected)
        await group.submit([_completion_build(body, p) for p in prompts], "prompt")
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": self.model}

        def choice(idx: int, up: ChoiceUpdate) -> dict[str, Any]:
            return {"index": idx * body.n + up.index, "text": up.text,
                    "logprobs": completion_logprobs(up.logprobs) if body.logprobs is not None else None,
                    "finish_reason": up.finish_reason}

        if body.stream:
            return self._stream(group, head, choice, body, chat=False)
        return await self._collect(group, head, choice)

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Any:
        reject_unsupported(body)
        # a stream notices a gone client itself (the response's disconnect listener cancels it)
        group = RequestGroup(self.loop, None if body.stream else request.is_disconnected)
        await group.submit([_chat_build(body)], "messages")
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": int(time.time()), "model": self.model}

        def choice(idx: int, up: ChoiceUpdate) -> dict[str, Any]:
            key = "delta" if body.stream else "message"
            msg: dict[str, Any] = {"content": up.text} if body.stream else {"role": "assistant", "content": up.text}
            return {"index": up.index, key: msg,
                    "logprobs": {"content": up.logprobs} if body.logprobs else None,
                    "finish_reason": up.finish_reason}

        if body.stream:
            head["object"] = "chat.completion.chunk"
            return self._stream(group, head, choice, body, chat=True)
        return await self._collect(group, head, choice)

    async def _collect(self, group: RequestGroup, head: dict[str, Any],
                       choice: Callable[[int, ChoiceUpdate], dict[str, Any]]) -> JSONResponse:
        choices: list[dict[str, Any]] = []
        n_out = 0
        try:
            async for idx, ev in group.events():
                if not ev.output.finished:
                    continue
                _check_error(ev)
                n_out += sum(len(c.token_ids) for c in ev.output.outputs)
                choices += [choice(idx, up) for up in ev.payload]
        finally:
            group.abort_unfinished()  # no-op when all finished; frees KV if the client left
        choices.sort(key=lambda c: c["index"])
        n_prompt = sum(len(p) for p in group.prompt_ids)
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
        return JSONResponse({**head, "choices": choices, "usage": usage})

    def _stream(self, group: RequestGroup, head: dict[str, Any],
                choice: Callable[[int, ChoiceUpdate], dict[str, Any]],
                body: CompletionRequest | ChatCompletionRequest, chat: bool) -> StreamingResponse:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def sse(obj: dict[str, Any]) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        async def gen() -> AsyncIterator[str]:
            n_out = 0
            try:
                if chat:
                    yield sse({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                    "logprobs": None, "finish_reason": None}
                                                   for i in range(body.n)]})
                async for idx, ev in group.events():
                    try:
                        _check_error(ev)
                    except APIError as e:
                        yield sse(e.body())
                        continue
                    if ev.output.finished:
                        n_out += sum(len(c.token_ids) for c in ev.output.outputs)
                    for up in ev.payload or []:
                        if up.text or up.logprobs or up.finish_reason:
                            yield sse({**head, "choices": [choice(idx, up)]})
                if include_usage:
                    n_prompt = sum(len(p) for p in group.prompt_ids)
                    yield sse({**head, "choices": [], "usage": {
                        "prompt_tokens": n_prompt, "completion_tokens": n_out,
                        "total_tokens": n_prompt + n_out}})
                yield "data: [DONE]\n\n"
            finally:
                group.abort_unfinished()  # the client left mid-stream: free its KV

        return StreamingResponse(gen(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

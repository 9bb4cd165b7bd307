"""A request that fails inside the engine fails alone (HTTP 500 / an error event), a step that
raises fails only the requests in flight, and the server keeps serving; bearer-token auth.

A scripted stand-in engine makes the failures happen on cue (no model needed)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest
from serve_utils import base_url, live_server  # type: ignore[import-not-found]

from infer.outputs import CompletionOutput, RequestOutput


class _Tok:
    chat_template = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [3 + ord(c) % 40 for c in text]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(f"<{i}>" for i in ids)


class ScriptedEngine:
    """Emits token 7 per step. A prompt containing "boom" finishes with finish_reason="error"
    after 2 tokens; "crash" makes the whole step raise once."""

    def __init__(self) -> None:
        self.tokenizer = _Tok()
        self.max_model_len = 256
        self.stats = SimpleNamespace(output_tokens=0)
        self.scheduler = SimpleNamespace(cache=SimpleNamespace(usage=lambda: 0.0), running=[], waiting=[],
                                         num_preemptions=0)
        self.reqs: dict[str, dict[str, Any]] = {}
        self.aborted: list[str] = []

    def add_request(self, prompt: str | None, ids: list[int], params: Any, request_id: str) -> str:
        self.reqs[request_id] = {"prompt": prompt or "", "ids": ids, "params": params, "out": []}
        return request_id

    def has_unfinished(self) -> bool:
        return bool(self.reqs)

    def abort(self, rid: str) -> None:
        self.aborted.append(rid)
        self.reqs.pop(rid, None)

    def step(self) -> list[RequestOutput]:
        if any("crash" in r["prompt"] for r in self.reqs.values()):
            for r in self.reqs.values():
                r["prompt"] = r["prompt"].replace("crash", "")
            raise RuntimeError("simulated step failure")
        outs = []
        for rid, r in list(self.reqs.items()):
            r["out"].append(7)
            self.stats.output_tokens += 1
            reason, err = None, None
            if "boom" in r["prompt"] and len(r["out"]) == 2:
                reason, err = "error", "simulated failure"
            elif len(r["out"]) >= r["params"].max_tokens:
                reason = "length"
            done = reason is not None
            text = self.tokenizer.decode(r["out"]) if reason == "length" else ""
            outs.append(RequestOutput(rid, r["prompt"], r["ids"], None,
                                      [CompletionOutput(0, text, list(r["out"]), None, None, reason)],
                                      done, err, {}))
            if done:
                del self.reqs[rid]
        return outs


def test_failed_request_fails_alone() -> None:
    eng = ScriptedEngine()
    with live_server(eng, "scripted") as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="k", max_retries=0, timeout=30)
        with pytest.raises(openai.InternalServerError) as ei:
            client.completions.create(model="scripted", prompt="boom", max_tokens=5)
        assert ei.value.body["type"] == "server_error" and "simulated failure" in ei.value.body["message"]
        # streamed: an error event arrives, then the stream ends
        url = base_url(server)
        with httpx.stream("POST", f"{url}/completions", timeout=30,
                          json={"model": "scripted", "prompt": "boom", "max_tokens": 5, "stream": True}) as r:
            lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
        assert '"server_error"' in lines[-2] and lines[-1] == "data: [DONE]"
        r = client.completions.create(model="scripted", prompt="fine", max_tokens=3)
        assert r.choices[0].text == "<7><7><7>" and r.choices[0].finish_reason == "length"


def test_raising_step_fails_in_flight_requests_only() -> None:
    eng = ScriptedEngine()
    with live_server(eng, "scripted") as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="k", max_retries=0, timeout=30)
        with pytest.raises(openai.InternalServerError) as ei:
            client.completions.create(model="scripted", prompt="crash", max_tokens=5)
        assert "simulated step failure" in ei.value.body["message"]
        assert eng.aborted  # the failed request was dropped from the engine
        r = client.completions.create(model="scripted", prompt="after", max_tokens=2)
        assert r.choices[0].text == "<7><7>"
        assert httpx.get(base_url(server)[:-3] + "/health").status_code == 200


def test_bearer_token_required_when_configured() -> None:
    with live_server(ScriptedEngine(), "scripted", api_key="sekret") as server:
        url = base_url(server)
        bad = openai.OpenAI(base_url=url, api_key="wrong", max_retries=0, timeout=30)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=url, api_key="sekret", max_retries=0, timeout=30)
        assert good.completions.create(model="scripted", prompt="x", max_tokens=1).choices[0].text == "<7>"
        assert httpx.get(url[:-3] + "/health").status_code == 200  # probes need no key

"""The official ``openai`` client against the server: completions and chat, streamed and not,
equal to ``LLM.generate`` on the same engine (greedy, and seeded sampling)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from serve_utils import base_url, engine_call, live_server  # type: ignore[import-not-found]

from infer import SamplingParams

PROMPTS = ["Hello there", "The capital of France is", "def fib(n):"]


@pytest.fixture(scope="module")
def served(tiny_llm: Any) -> Any:
    """Expected outputs from LLM.generate first, then the same engine behind the server."""
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    exp = {p: o.outputs[0].text for p, o in zip(PROMPTS, tiny_llm.generate(PROMPTS, greedy))}
    chat_ids = tiny_llm.apply_chat_template([{"role": "user", "content": "hi"}])
    exp["chat"] = tiny_llm.generate({"prompt_token_ids": chat_ids}, greedy)[0].outputs[0].text
    seeded = SamplingParams(temperature=0.9, top_p=0.95, seed=7, n=2, max_tokens=10, ignore_eos=True)
    exp["seeded"] = [c.text for c in tiny_llm.generate(PROMPTS[0], seeded)[0].outputs]
    with live_server(tiny_llm.engine, "tiny") as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="unused", max_retries=0, timeout=60)
        yield server, client, exp


def test_completions_greedy_equal_generate(served: Any) -> None:
    _server, client, exp = served
    for p in PROMPTS:
        r = client.completions.create(model="tiny", prompt=p, max_tokens=12, temperature=0,
                                      extra_body={"ignore_eos": True})
        assert r.choices[0].text == exp[p]
        assert r.choices[0].finish_reason == "length"
        assert r.usage.completion_tokens == 12
        s = client.completions.create(model="tiny", prompt=p, max_tokens=12, temperature=0, stream=True,
                                      extra_body={"ignore_eos": True})
        chunks = list(s)
        assert "".join(c.choices[0].text for c in chunks) == exp[p]
        assert len(chunks) > 1 and chunks[-1].choices[0].finish_reason == "length"


def test_batch_prompts_and_seeded_n(served: Any) -> None:
    _server, client, exp = served
    r = client.completions.create(model="tiny", prompt=PROMPTS, max_tokens=12, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert [c.text for c in sorted(r.choices, key=lambda c: c.index)] == [exp[p] for p in PROMPTS]
    kw = {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": 10, "temperature": 0.9, "top_p": 0.95,
          "seed": 7, "n": 2, "extra_body": {"ignore_eos": True}}
    r = client.completions.create(**kw)
    assert [c.text for c in r.choices] == exp["seeded"]
    texts = ["", ""]
    for ch in client.completions.create(stream=True, **kw):
        for c in ch.choices:
            texts[c.index] += c.text
    assert texts == exp["seeded"]


def test_chat_greedy_equal_generate(served: Any) -> None:
    _server, client, exp = served
    msgs = [{"role": "user", "content": "hi"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == exp["chat"]
    s = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0,
                                       stream=True, stream_options={"include_usage": True},
                                       extra_body={"ignore_eos": True})
    chunks = list(s)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == exp["chat"]
    assert chunks[-1].usage.completion_tokens == 12 and not chunks[-1].choices


def test_stop_strings_stream_equals_non_stream(served: Any) -> None:
    _server, client, exp = served
    text = exp[PROMPTS[1]]
    stop = text[len(text) // 2 : len(text) // 2 + 3]  # a stop string the output really contains
    kw = {"model": "tiny", "prompt": PROMPTS[1], "max_tokens": 12, "temperature": 0, "stop": [stop]}
    r = client.completions.create(**kw)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == text[: text.index(stop)]
    assert "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw)) == r.choices[0].text


def test_logprobs_match_engine(served: Any, tiny_llm: Any) -> None:
    _server, client, _exp = served
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=4, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for e in content:
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token  # greedy = top-1
        assert e.logprob == pytest.approx(e.top_logprobs[0].logprob)
    r = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=3, temperature=0, logprobs=2,
                                  echo=True)
    lp = r.choices[0].logprobs
    n_prompt = r.usage.prompt_tokens
    assert r.choices[0].text.startswith(PROMPTS[0])
    assert len(lp.tokens) == n_prompt + 3 and lp.token_logprobs[0] is None
    assert all(v is not None and v < 0 for v in lp.token_logprobs[1:])


def test_models_health_metrics(served: Any) -> None:
    server, client, _exp = served
    assert [m.id for m in client.models.list().data] == ["tiny"]
    root = base_url(server)[: -len("/v1")]
    assert httpx.get(f"{root}/health").json() == {"status": "ok"}
    text = httpx.get(f"{root}/metrics").text
    for name in ("infer_time_to_first_token_seconds_bucket", "infer_time_per_output_token_seconds_bucket",
                 "infer_kv_cache_usage_ratio", "infer_num_requests_waiting", "infer_num_preemptions",
                 "infer_spec_decode_acceptance_rate", "infer_generation_tokens_per_second"):
        assert name in text, name
    gen = [ln for ln in text.splitlines() if ln.startswith("infer_generation_tokens_total")]
    assert float(gen[0].split()[-1]) > 0
    assert engine_call(server, lambda e: e.scheduler.cache.usage()) == 0.0

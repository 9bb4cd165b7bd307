"""32 concurrent clients get complete, correct responses while another client sends malformed
requests and another disconnects mid-stream; the server keeps serving and the KV cache ends
entirely free. Loopback only; every loop is bounded in count and time."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
from serve_utils import base_url, engine_call, live_server  # type: ignore[import-not-found]

from infer import SamplingParams

N_CLIENTS = 32

# (body, the field the 400 must name); None = no particular field
MALFORMED: list[tuple[Any, str | None]] = [
    ('{"model": "m", "prompt": "hi", ', None),  # not JSON
    ({"model": "m"}, "prompt"),
    ({"model": "m", "prompt": "hi", "max_tokens": "ten"}, "max_tokens"),
    ({"model": "m", "prompt": "hi", "temperature": -1}, "temperature"),
    ({"model": "m", "prompt": "hi", "top_p": 1.5}, "top_p"),
    ({"model": "m", "prompt": "hi", "n": 0}, "n"),
    ({"model": "m", "prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "prompt": "hi", "presence_penalty": 9}, "presence_penalty"),
    ({"model": "m", "prompt": "hi", "logit_bias": {"5": 1.0}}, "logit_bias"),
    ({"model": "m", "prompt": [10**9]}, "prompt"),  # token id outside the vocabulary
    ({"model": "m", "prompt": "word " * 2100}, "prompt"),  # longer than max_model_len
    ({"model": "m", "prompt": "hi", "stop": 3}, "stop"),
]
MALFORMED_CHAT: list[tuple[Any, str | None]] = [
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, "top_logprobs"),
]


def _malformed_client(url: str) -> int:
    """Send every malformed body twice; check each answer is an OpenAI-shaped 400."""
    n = 0
    with httpx.Client(timeout=60) as h:
        for _ in range(2):
            for path, cases in (("completions", MALFORMED), ("chat/completions", MALFORMED_CHAT)):
                for body, param in cases:
                    kw = {"content": body} if isinstance(body, str) else {"json": body}
                    r = h.post(f"{url}/{path}", headers={"content-type": "application/json"}, **kw)
                    assert r.status_code == 400, (body, r.status_code, r.text)
                    err = r.json()["error"]
                    assert err["type"] == "invalid_request_error" and err["message"]
                    if param is not None:
                        assert err["param"] == param, (body, err)
                    n += 1
    return n


def _disconnecting_client(url: str) -> int:
    """Start a long stream, read a few events, then drop the connection."""
    body = {"model": "m", "prompt": "a long story", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    got = 0
    with httpx.Client(timeout=60) as h, h.stream("POST", f"{url}/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                got += 1
                if got == 3:
                    break
    return got  # leaving the with-blocks closes the connection mid-stream


def _good_client(client: openai.OpenAI, i: int, prompt: str) -> str:
    kw = {"model": "m", "prompt": prompt, "max_tokens": 16, "temperature": 0,
          "extra_body": {"ignore_eos": True}}
    if i % 2:
        return "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw))
    r = client.completions.create(**kw)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 16
    return r.choices[0].text


def _metric(text: str, name: str, label: str) -> float:
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(name) and label in ln)


def test_concurrent_clients_malformed_and_disconnect(tiny_llm: Any) -> None:
    prompts = [f"Client {i} asks about topic number {i * 7}" for i in range(N_CLIENTS)]
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    expected = [o.outputs[0].text for o in tiny_llm.generate(prompts, greedy)]
    with live_server(tiny_llm.engine, "m") as server:
        url = base_url(server)
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
        with ThreadPoolExecutor(N_CLIENTS + 2) as pool:
            bad = pool.submit(_malformed_client, url)
            gone = pool.submit(_disconnecting_client, url)
            good = [pool.submit(_good_client, client, i, p) for i, p in enumerate(prompts)]
            texts = [f.result(timeout=300) for f in good]
            assert bad.result(timeout=300) == 2 * (len(MALFORMED) + len(MALFORMED_CHAT))
            assert gone.result(timeout=300) == 3
        assert texts == expected

        # the server still serves, and the dropped stream was aborted, not run to its end
        r = client.completions.create(model="m", prompt=prompts[0], max_tokens=16, temperature=0,
                                      extra_body={"ignore_eos": True})
        assert r.choices[0].text == expected[0]
        root = url[: -len("/v1")]
        assert httpx.get(f"{root}/health").status_code == 200
        deadline = time.monotonic() + 60  # the abort is a queued command: let it land
        while time.monotonic() < deadline:
            if not engine_call(server, lambda e: e.has_unfinished()):
                break
            time.sleep(0.1)
        assert engine_call(server, lambda e: (e.has_unfinished(), e.scheduler.cache.usage())) == (False, 0.0)
        prom = httpx.get(f"{root}/metrics").text
        assert _metric(prom, "infer_requests_total", 'finish_reason="abort"') == 1
        assert _metric(prom, "infer_requests_total", 'finish_reason="length"') == N_CLIENTS + 1
        assert json.loads(httpx.get(f"{url}/models").text)["data"][0]["id"] == "m"

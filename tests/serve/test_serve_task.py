"""``python run.py task=serve`` as a user runs it (SIGTERM lets an open stream finish), and the
official client against SmolLM2: greedy outputs equal ``LLM.generate``'s."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
from serve_utils import base_url, free_port, live_server  # type: ignore[import-not-found]

from infer import SamplingParams

REPO = Path(__file__).resolve().parents[2]


def test_run_py_task_serve_graceful_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "run.py", "model=tiny", "task=serve", f"task.port={port}", "threads=1",
         "task.graceful_shutdown_s=120", "task.log_level=warning", f"hydra.run.dir={tmp_path}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        root = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()  # type: ignore[union-attr]
            try:
                if httpx.get(f"{root}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        body = {"model": "tiny-llama", "prompt": "Once", "max_tokens": 300, "ignore_eos": True,
                "stream": True}
        events = []
        # generous: a fresh machine compiles the CPU kernels on the first forward
        with httpx.stream("POST", f"{root}/v1/completions", json=body, timeout=600) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 2:
                        proc.send_signal(signal.SIGTERM)  # mid-stream: the stream must still complete
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:  # SIGTERM first: a killed kernel compile would leave its lock behind
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["task"] == "serve" and metrics["output_tokens"] >= 300


def test_smollm2_openai_client_equals_generate(smollm2: Any) -> None:
    greedy = SamplingParams(temperature=0, max_tokens=8)
    prompt = "The capital of France is"
    exp = smollm2.generate([prompt], greedy)[0].outputs[0].text
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    exp_chat = smollm2.generate({"prompt_token_ids": smollm2.apply_chat_template(msgs)}, greedy)[0].outputs[0].text
    assert "Paris" in exp + exp_chat  # a real model, not noise
    with live_server(smollm2.engine, "smollm2") as server:
        c = openai.OpenAI(base_url=base_url(server), api_key="unused", max_retries=0, timeout=120)
        r = c.completions.create(model="smollm2", prompt=prompt, max_tokens=8, temperature=0)
        assert r.choices[0].text == exp
        s = c.completions.create(model="smollm2", prompt=prompt, max_tokens=8, temperature=0, stream=True)
        assert "".join(ch.choices[0].text for ch in s) == exp
        r = c.chat.completions.create(model="smollm2", messages=msgs, max_tokens=8, temperature=0)
        assert r.choices[0].message.content == exp_chat
        s = c.chat.completions.create(model="smollm2", messages=msgs, max_tokens=8, temperature=0, stream=True)
        assert "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices) == exp_chat

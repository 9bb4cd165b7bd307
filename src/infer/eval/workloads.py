"""Benchmark workloads: lists of ``Request`` built from a corpus or a ShareGPT file.

Every generator is seeded and returns token ids directly, so one workload is the same
across configurations and reusable from scripts. Lengths are in tokens.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Request:
    """One benchmark request.

    depends_on: index of the request that must finish before this one is sent (the previous
    turn of a conversation); None = sent at the start (or at its Poisson arrival time).
    """

    prompt_token_ids: list[int]
    max_tokens: int
    ignore_eos: bool = True
    depends_on: int | None = None
    prompt: str | None = None


def _rng_len(rng: random.Random, span: Any) -> int:
    """A length uniform in [a, b] (span is [a, b] or a single int)."""
    if isinstance(span, int):
        return span
    a, b = int(span[0]), int(span[1])
    if a < 1 or b < a:
        raise ValueError(f"length range {list(span)} must satisfy 1 <= a <= b")
    return rng.randint(a, b)


def _slice(rng: random.Random, ids: list[int], n: int) -> list[int]:
    """A random contiguous n-token slice of the corpus."""
    if len(ids) < n:
        raise ValueError(f"corpus has {len(ids)} tokens, fewer than the {n} a prompt needs")
    s = rng.randint(0, len(ids) - n)
    return ids[s : s + n]


def synthetic(
    corpus_ids: list[int], num_requests: int, prompt_len: Any, output_len: Any,
    seed: int = 0, ignore_eos: bool = True,
) -> list[Request]:
    """Corpus slices of uniform random length ``prompt_len`` [a, b]; outputs ``output_len`` [c, d]."""
    rng = random.Random(seed)
    return [
        Request(_slice(rng, corpus_ids, _rng_len(rng, prompt_len)), _rng_len(rng, output_len), ignore_eos)
        for _ in range(int(num_requests))
    ]


def shared_prefix(
    corpus_ids: list[int], num_requests: int, prefix_len: int, question_len: Any, output_len: Any,
    seed: int = 0, ignore_eos: bool = True,
) -> list[Request]:
    """One long "system prompt" of ``prefix_len`` tokens followed by a different question per request."""
    rng = random.Random(seed)
    prefix = _slice(rng, corpus_ids, int(prefix_len))
    return [
        Request(prefix + _slice(rng, corpus_ids, _rng_len(rng, question_len)), _rng_len(rng, output_len), ignore_eos)
        for _ in range(int(num_requests))
    ]


def few_shot(
    tokenizer: Any, corpus_ids: list[int], num_requests: int, num_shots: int, shot_len: int,
    question_len: Any, output_len: Any, seed: int = 0, ignore_eos: bool = True,
) -> list[Request]:
    """``num_shots`` shared examples ("Example k:" + a corpus slice), then a per-request question."""
    rng = random.Random(seed)
    prefix: list[int] = []
    for k in range(int(num_shots)):
        prefix += tokenizer.encode(f"\n\nExample {k + 1}:\n", add_special_tokens=False)
        prefix += _slice(rng, corpus_ids, int(shot_len))
    q_head = tokenizer.encode("\n\nQuestion:\n", add_special_tokens=False)
    return [
        Request(prefix + q_head + _slice(rng, corpus_ids, _rng_len(rng, question_len)),
                _rng_len(rng, output_len), ignore_eos)
        for _ in range(int(num_requests))
    ]


def chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Chat-template token ids with the generation prompt (plain concatenation without a template)."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
    return list(tokenizer.encode(text, add_special_tokens=False))


def multi_turn(
    tokenizer: Any, corpus_ids: list[int], num_conversations: int, num_turns: int,
    user_len: Any, output_len: Any, seed: int = 0, ignore_eos: bool = True,
) -> list[Request]:
    """Chats where every turn resends the whole history (chat template applied).

    The history's assistant replies are corpus text of the turn's output length, not the
    model's own outputs, so the workload is identical for every configuration; turn t+1
    is sent only after turn t finished (``depends_on``).
    """
    rng = random.Random(seed)
    reqs: list[Request] = []
    for _ in range(int(num_conversations)):
        history: list[dict[str, str]] = []
        prev: int | None = None
        for _ in range(int(num_turns)):
            user = tokenizer.decode(_slice(rng, corpus_ids, _rng_len(rng, user_len)))
            history.append({"role": "user", "content": user})
            n_out = _rng_len(rng, output_len)
            reqs.append(Request(chat_ids(tokenizer, history), n_out, ignore_eos, depends_on=prev))
            prev = len(reqs) - 1
            history.append({"role": "assistant", "content": tokenizer.decode(_slice(rng, corpus_ids, n_out))})
    return reqs


def sharegpt(
    tokenizer: Any, path: str, num_requests: int, seed: int = 0, max_prompt_len: int = 1024,
    max_output_len: int = 512, min_len: int = 4, chat: bool = True, ignore_eos: bool = True,
) -> list[Request]:
    """vLLM-style ShareGPT sampling: the first human turn is the prompt; the first reply's
    token count is the output length. ``path``: a JSON list of {"conversations": [{"from",
    "value"}, ...]}. Conversations outside [min_len, max_*_len] are skipped."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"workload.generator.path={path!r}: no ShareGPT JSON file there")
    data = json.loads(p.read_text())
    rng = random.Random(seed)
    rng.shuffle(data)
    reqs: list[Request] = []
    for conv in data:
        turns = conv.get("conversations") or conv.get("conversation") or []
        if len(turns) < 2:
            continue
        text, reply = str(turns[0]["value"]), str(turns[1]["value"])
        ids = chat_ids(tokenizer, [{"role": "user", "content": text}]) if chat else \
            list(tokenizer.encode(text, add_special_tokens=False))
        n_out = len(tokenizer.encode(reply, add_special_tokens=False))
        if not (min_len <= len(ids) <= max_prompt_len and min_len <= n_out <= max_output_len):
            continue
        reqs.append(Request(ids, n_out, ignore_eos, prompt=text))
        if len(reqs) == int(num_requests):
            break
    if not reqs:
        raise ValueError(f"no usable conversation in {path} (check the lengths limits)")
    return reqs


def from_prompts(tokenizer: Any, prompts: list[str], max_tokens: int, chat: bool = True,
                 ignore_eos: bool = False) -> list[Request]:
    """Fixed text prompts (as user messages when ``chat``)."""
    out = []
    for t in prompts:
        ids = chat_ids(tokenizer, [{"role": "user", "content": t}]) if chat else \
            list(tokenizer.encode(t, add_special_tokens=False))
        out.append(Request(ids, int(max_tokens), ignore_eos, prompt=t))
    return out

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


# ---- input-grounded prompts (where prompt lookup and suffix speculation shine) ----------------
#: stdlib modules whose source is the code material (fixed for a given Python version)
GROUNDED_CODE_MODULES = (
    "textwrap", "heapq", "bisect", "fnmatch", "shlex", "colorsys", "json.decoder", "json.encoder",
    "string", "calendar", "difflib", "statistics", "fractions", "functools", "glob", "pprint",
    "graphlib", "reprlib", "queue",
)
GROUNDED_TASKS = ("repeat", "rename", "replace_word", "continue")
_SUBSTITUTES = ("item", "value", "record", "entry", "element", "object", "thing", "piece")


def _grounded_sources() -> tuple[list[list[str]], list[list[str]]]:
    """(code files as line lists, prose documents as paragraph lists), offline and stable."""
    import importlib
    import inspect

    from infer.eval.data import pydoc_text

    code = [inspect.getsource(importlib.import_module(m)).splitlines() for m in GROUNDED_CODE_MODULES]
    paras = [p.strip() for p in pydoc_text().split("\n\n") if len(p.strip()) > 40]
    return code, [paras]


def _excerpt(rng: random.Random, tokenizer: Any, units: list[str], n_tokens: int, joiner: str) -> str:
    """Consecutive units (lines or paragraphs) from a random start until ~n_tokens tokens."""
    start = rng.randrange(len(units))
    out: list[str] = []
    count = 0
    for u in units[start:] + units[:start]:
        out.append(u)
        count += len(tokenizer.encode(u + joiner, add_special_tokens=False))
        if count >= n_tokens:
            break
    return joiner.join(out).strip("\n")


def _repeated_word(rng: random.Random, text: str, pattern: str) -> str | None:
    """A word (matching ``pattern``) that occurs at least twice in ``text``, or None."""
    import keyword
    import re

    words = re.findall(pattern, text)
    counts: dict[str, int] = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    cands = sorted(w for w, c in counts.items() if c >= 2 and not keyword.iskeyword(w) and w not in ("self", "None"))
    return rng.choice(cands) if cands else None


def grounded(
    tokenizer: Any, num_requests: int, source_len: Any = (96, 384), output_scale: float = 1.2,
    tasks: Any = GROUNDED_TASKS, code_fraction: float = 0.5, seed: int = 0, ignore_eos: bool = False,
) -> list[Request]:
    """Chat prompts that ask to repeat, edit or continue a code or text excerpt given in the prompt.

    Code excerpts are whole lines of stdlib modules' source (``GROUNDED_CODE_MODULES``), text
    excerpts whole paragraphs of ``pydoc_data.topics``; both ship with Python, so the workload
    is offline and, for a given Python version and seed, always the same. Tasks (``tasks``):
    ``repeat`` (copy verbatim), ``rename`` (code: rename an identifier used twice or more;
    text: replace a repeated word), ``replace_word`` (the same on either kind), ``continue``
    (write what comes next). ``source_len``: excerpt tokens, uniform in [a, b];
    ``max_tokens`` = output_scale x the excerpt's tokens (the answer restates the excerpt).
    """
    bad = [t for t in tasks if t not in GROUNDED_TASKS]
    if bad or not tasks:
        raise ValueError(f"workload.generator.tasks={list(tasks)!r}: each must be one of {list(GROUNDED_TASKS)}")
    if not 0.0 <= float(code_fraction) <= 1.0:
        raise ValueError(f"workload.generator.code_fraction must be in [0, 1], got {code_fraction}")
    if float(output_scale) <= 0:
        raise ValueError(f"workload.generator.output_scale must be > 0, got {output_scale}")
    rng = random.Random(seed)
    code, prose = _grounded_sources()
    reqs: list[Request] = []
    for _ in range(int(num_requests)):
        n_src = _rng_len(rng, source_len)
        task = rng.choice(list(tasks))
        is_code = rng.random() < float(code_fraction)
        if is_code:
            src = _excerpt(rng, tokenizer, rng.choice(code), n_src, "\n")
            block, kind = f"```python\n{src}\n```", "Python code"
        else:
            src = _excerpt(rng, tokenizer, prose[0], n_src, "\n\n")
            block, kind = f'"""\n{src}\n"""', "text"
        word = None
        if task in ("rename", "replace_word"):
            word = _repeated_word(rng, src, r"\b[A-Za-z_][A-Za-z0-9_]{3,}\b" if is_code else r"\b[a-z]{5,}\b")
        if task == "repeat" or (task in ("rename", "replace_word") and word is None):
            text = f"Repeat the following {kind} exactly, without any change:\n\n{block}"
        elif task == "rename" and is_code:
            text = (f"Rename `{word}` to `{word}_new` everywhere in the following Python code. "
                    f"Output the complete updated code.\n\n{block}")
        elif task in ("rename", "replace_word"):
            sub = rng.choice(_SUBSTITUTES)
            text = (f'Rewrite the following {kind}, replacing every occurrence of "{word}" with "{sub}". '
                    f"Keep everything else the same and output the whole result.\n\n{block}")
        else:
            text = f"Here is some {kind}. Copy it, then continue it in the same style.\n\n{block}"
        ids = chat_ids(tokenizer, [{"role": "user", "content": text}])
        n_tokens = len(tokenizer.encode(src, add_special_tokens=False))
        reqs.append(Request(ids, max(1, round(float(output_scale) * n_tokens)), ignore_eos, prompt=text))
    return reqs

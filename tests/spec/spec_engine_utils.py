"""Helpers for the engine-level speculative-decoding tests (tests/spec/test_spec_*.py).

Prompts that make lookup proposers fire, a probe that records what the scheduler did
(chunked prefill, drafts in intermediate chunks), cache-leak and radix-content checks, a
tiny-vocabulary checkpoint for distribution tests, and a two-sample chi-square test.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from infer import LLM, SamplingParams

#: every proposer, as (spec option, extra overrides) for a 2-layer tiny checkpoint
PROPOSERS: dict[str, tuple[str, list[str]]] = {
    "ngram": ("ngram", []),
    "suffix": ("suffix", []),
    "draft": ("draft", []),  # spec.model=null: the target's own checkpoint
    "self-layers": ("self", ["spec.mode=layers", "spec.skip_layers=[1]"]),
    "self-quant": ("self", ["spec.mode=quant", "spec.draft_quant=int8"]),
}


def corpus_ids(tok: Any) -> list[int]:
    import pydoc_data.topics as t

    return tok.encode("\n".join(list(t.topics.values())[:40]), add_special_tokens=False)


def spec_prompts(tok: Any, n: int, seed: int = 0, max_len: int = 120) -> list[list[int]]:
    """``n`` mixed prompts: corpus slices of 3..max_len tokens, copies (a slice written
    twice, so prompt lookup has something to copy), and slices behind one shared 40-token
    prefix (so the radix cache hits)."""
    ids = corpus_ids(tok)
    rng = random.Random(seed)
    shared = ids[:40]
    out: list[list[int]] = []
    for i in range(n):
        length = rng.randint(3, max_len)
        start = rng.randrange(40, len(ids) - length)
        body = ids[start : start + length]
        if i % 4 == 1:  # grounded: repeat a passage
            half = body[: max(2, length // 2)]
            body = (half + half)[:max_len]
        elif i % 4 == 3:  # shared prefix
            body = (shared + body)[: max(41, min(max_len, 40 + length))]
        out.append(body)
    return out


def token_ids(outs: list[Any]) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outs]


def generate(llm: LLM, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[Any]:
    return llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)


@dataclass
class ScheduleProbe:
    """Wraps ``engine.scheduler.schedule`` and records what each step scheduled."""

    partial_chunks: int = 0  # prefill chunks that did not finish their sequence's prompt
    mixed_steps: int = 0  # steps with a drafting decode and a prefill chunk together
    draft_in_partial: list[str] = field(default_factory=list)  # violations
    max_fed: int = 0  # most tokens fed in one step (committed + draft slots)

    def attach(self, engine: Any) -> ScheduleProbe:
        inner = engine.scheduler.schedule

        def schedule() -> list[Any]:
            batch = inner()
            fed = 0
            drafting = prefill = False
            for b in batch:
                fed += b.num_new + b.num_slots
                if not b.completes:
                    self.partial_chunks += 1
                    prefill = True
                    if b.num_slots:
                        self.draft_in_partial.append(b.seq.request_id)
                elif b.seq.num_computed_tokens < b.seq.num_prompt_tokens:
                    prefill = True
                if b.num_slots:
                    drafting = True
            self.mixed_steps += drafting and prefill
            self.max_fed = max(self.max_fed, fed)
            return batch

        engine.scheduler.schedule = schedule
        return self


def assert_kv_released(engine: Any) -> None:
    """After every request finished: no sequence holds a KV block, in the target cache and
    in a model-based proposer's own cache; the proposer keeps no per-sequence state."""
    cache = engine.scheduler.cache
    held = {sid: t for sid, t in cache._tables.items() if t}
    assert not held, f"finished sequences still hold target KV blocks: {held}"
    if getattr(cache, "reuses_prefixes", False):  # only the tree's own references remain
        idle = sum(1 for n in cache._iter_nodes() if n.users == 0)
        assert cache.allocator.num_free + idle == cache.num_blocks
    else:
        assert cache.usage() == 0.0
    draft_cache = getattr(engine.proposer, "cache", None)
    if draft_cache is not None:
        assert draft_cache.usage() == 0.0, "the draft model's KV was not released"
        assert not engine.proposer._shadows


def assert_radix_holds_accepted_only(cache: Any, sequences: list[list[int]]) -> int:
    """Every root-to-node path of the radix tree is a prefix of some finished sequence's
    prompt + output (a rejected draft never enters the tree). Returns the node count."""
    keys = {tuple(s) for s in sequences}
    prefixes: set[tuple[int, ...]] = set()
    for s in keys:
        for i in range(cache.block_size, len(s) + 1, cache.block_size):
            prefixes.add(s[:i])
    count = 0
    stack = [(n, n.key) for n in cache.root.children.values()]
    while stack:
        node, path = stack.pop()
        count += 1
        assert path in prefixes, f"radix node holds tokens no request accepted: ...{path[-8:]}"
        stack.extend((c, path + c.key) for c in node.children.values())
    return count


# ---- a tiny-vocabulary checkpoint --------------------------------------------------------
def make_tiny_vocab_checkpoint(out: Path, vocab: int = 12, seed: int = 0, layers: int = 2,
                               init: float = 0.5) -> Path:
    """A random Llama with a ``vocab``-token vocabulary and no tokenizer (load it with
    ``skip_tokenizer_init=True``). ``init`` sets how peaked its next-token distributions are:
    large enough that continuations concentrate on few cells, small enough that sampling
    has real choices."""
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-6, initializer_range=init, bos_token_id=0, eos_token_id=vocab - 1,
        tie_word_embeddings=False,
    )
    model = tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


# ---- two-sample chi-square ---------------------------------------------------------------
def chi2_two_sample(a: list[tuple[int, ...]], b: list[tuple[int, ...]], min_expected: float = 5.0
                    ) -> tuple[float, int, float]:
    """Two-sample chi-square homogeneity test of the categorical samples ``a`` and ``b``.

    Cells whose pooled expected count is below ``min_expected`` in either sample are merged
    into one cell (and dropped if that cell is still too small). Returns (statistic, degrees
    of freedom, p-value)."""
    from collections import Counter

    ca, cb = Counter(a), Counter(b)
    na, nb = len(a), len(b)
    n = na + nb
    cells: list[tuple[int, int]] = []
    rare = [0, 0]
    for key in set(ca) | set(cb):
        x, y = ca.get(key, 0), cb.get(key, 0)
        if (x + y) * min(na, nb) / n < min_expected:
            rare[0] += x
            rare[1] += y
        else:
            cells.append((x, y))
    if (rare[0] + rare[1]) * min(na, nb) / n >= min_expected:
        cells.append((rare[0], rare[1]))
    stat = 0.0
    for x, y in cells:
        tot = x + y
        ea, eb = tot * na / n, tot * nb / n
        stat += (x - ea) ** 2 / ea + (y - eb) ** 2 / eb
    df = max(len(cells) - 1, 1)
    p = float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                      torch.tensor(stat / 2, dtype=torch.float64)))
    return stat, df, p


def total_variation(a: list[tuple[int, ...]], b: list[tuple[int, ...]]) -> float:
    from collections import Counter

    ca, cb = Counter(a), Counter(b)
    return 0.5 * sum(abs(ca.get(k, 0) / len(a) - cb.get(k, 0) / len(b)) for k in set(ca) | set(cb))


def isclose_all(xs: list[float], ys: list[float], tol: float) -> bool:
    return len(xs) == len(ys) and all(math.isclose(x, y, abs_tol=tol) for x, y in zip(xs, ys))


# ---- exact next-token distributions and a sequential chi-square test -----------------------
@torch.inference_mode()
def exact_conditionals(folder: Path, prompt: list[int], params: SamplingParams, length: int
                       ) -> dict[tuple[int, ...], torch.Tensor]:
    """The distribution plain sampling draws from after every possible output prefix of fewer
    than ``length`` tokens: HF transformers' logits (the model oracle) processed by the
    engine's own processors (temperature, top-k/p, min-p, penalties seeing that prefix).
    Returns prefix -> float64 [V]."""
    from transformers import AutoModelForCausalLM

    from infer.sampling import RowContext, Sampler
    from infer.sequence import Sequence

    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    vocab = hf.config.vocab_size
    seq = Sequence(0, "oracle", None, list(prompt), params, 0.0)
    out: dict[tuple[int, ...], torch.Tensor] = {}
    level: list[tuple[int, ...]] = [()]
    for j in range(length):
        ids = torch.tensor([list(prompt) + list(h) for h in level])
        logits = hf(ids).logits[:, -1].float()
        proc = Sampler(vocab).process(logits, [RowContext(seq, list(h)) for h in level])
        assert proc.probs is not None
        for h, p in zip(level, proc.probs.double()):
            out[h] = p / p.sum()
        if j + 1 < length:
            level = [h + (t,) for h in level for t in range(vocab)]
    return out


def sequential_chi2(samples: list[tuple[int, ...]], cond: dict[tuple[int, ...], torch.Tensor],
                    min_expected: float = 5.0) -> tuple[float, int, float]:
    """Goodness of fit of sampled continuations to the exact conditionals, position by
    position: for each position j and each observed prefix h, the next-token counts after h
    against ``count(h) * P(. | h)``. Cells expected below ``min_expected`` are pooled; the
    per-group statistics add up (the joint law factorises over positions). A sample token
    with probability 0 under the oracle fails at once. Returns (statistic, df, p-value)."""
    from collections import Counter

    stat, df = 0.0, 0
    length = len(samples[0])
    for j in range(length):
        groups = Counter(s[:j] for s in samples)
        nxt = Counter(s[: j + 1] for s in samples)
        for h, n in groups.items():
            p = cond[h]
            obs = torch.tensor([nxt.get(h + (t,), 0) for t in range(len(p))], dtype=torch.float64)
            impossible = (obs > 0) & (p < 1e-12)
            assert not impossible.any(), f"after {h} sampled tokens {impossible.nonzero().flatten().tolist()} of probability 0"
            exp = n * p
            big = exp >= min_expected
            o_cells, e_cells = obs[big].tolist(), exp[big].tolist()
            rest_o, rest_e = float(obs[~big].sum()), float(exp[~big].sum())
            if rest_e >= min_expected:
                o_cells.append(rest_o)
                e_cells.append(rest_e)
            elif o_cells and rest_e > 0:  # too small alone: pool with the smallest cell
                i = min(range(len(e_cells)), key=e_cells.__getitem__)
                o_cells[i] += rest_o
                e_cells[i] += rest_e
            if len(o_cells) < 2:
                continue
            stat += sum((o - e) ** 2 / e for o, e in zip(o_cells, e_cells))
            df += len(o_cells) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                            torch.tensor(stat / 2, dtype=torch.float64)))
    return stat, df, p_value

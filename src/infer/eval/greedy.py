"""Greedy agreement with the reference on a prompt set: identical continuations and the
mean matching prefix length."""

from __future__ import annotations

from typing import Any

from infer.eval.progress import progress
from infer.sampling_params import SamplingParams


def corpus_prompts(ids: list[int], num: int, prompt_len: int) -> list[list[int]]:
    """``num`` prompts of ``prompt_len`` tokens, evenly spaced through the corpus ``ids``."""
    if num <= 0:
        return []
    if len(ids) < prompt_len:
        raise ValueError(f"corpus has {len(ids)} tokens, fewer than eval.greedy_prompt_len={prompt_len}")
    stride = max((len(ids) - prompt_len) // num, 1)
    return [ids[i * stride : i * stride + prompt_len] for i in range(num)]


def generate_greedy(engine: Any, prompts: list[list[int]], max_tokens: int, desc: str = "greedy") -> list[list[int]]:
    """Greedy continuations (``max_tokens`` each, EOS ignored) through the engine's loop."""
    params = SamplingParams(temperature=0.0, max_tokens=int(max_tokens), ignore_eos=True)
    rids = [engine.add_request(None, p, params) for p in prompts]
    done: dict[str, list[int]] = {}
    bar = progress(total=len(rids), desc=desc, unit="req")
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = list(out.outputs[0].token_ids)
                bar.update(1)
    bar.close()
    return [done[r] for r in rids]


def agreement(cand: list[list[int]], ref: list[list[int]]) -> dict[str, float]:
    """greedy_match: fraction of identical continuations; greedy_prefix: mean number of
    leading tokens equal to the reference's; greedy_prefix_frac: that over the length."""
    if not ref:
        return {}
    prefixes = []
    for c, r in zip(cand, ref):
        k = 0
        while k < min(len(c), len(r)) and c[k] == r[k]:
            k += 1
        prefixes.append(k)
    n = len(ref)
    max_len = max(max(len(r) for r in ref), 1)
    return {
        "greedy_match": sum(c == r for c, r in zip(cand, ref)) / n,
        "greedy_prefix": sum(prefixes) / n,
        "greedy_prefix_frac": sum(prefixes) / n / max_len,
    }

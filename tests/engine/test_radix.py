"""attention=radix is lossless: identical tokens to attention=paged on shared-prefix,
few-shot and multi-turn workloads, also under eviction pressure and preemption; the cache
really is hit; prompt_logprobs stay correct for prompts the cache holds."""

from __future__ import annotations

import pytest

from infer import LLM, SamplingParams
from infer.eval.bench import run_requests
from infer.eval.workloads import few_shot, multi_turn, shared_prefix


@pytest.fixture(scope="module")
def folder(tiny_checkpoint):  # type: ignore[no-untyped-def]
    return str(tiny_checkpoint("llama"))


@pytest.fixture(scope="module")
def workloads(folder):  # type: ignore[no-untyped-def]
    tok = LLM(model=folder, attention="torch").get_tokenizer()
    import pydoc_data.topics as t

    corpus = tok.encode("\n".join(list(t.topics.values())[:30]), add_special_tokens=False)
    return {
        "shared_prefix": shared_prefix(corpus, 12, 200, [4, 24], [4, 12], seed=1),
        "few_shot": few_shot(tok, corpus, 10, 3, 40, [4, 16], [4, 12], seed=2),
        "multi_turn": multi_turn(tok, corpus, 3, 4, [8, 24], [4, 10], seed=3),
    }


@pytest.fixture(scope="module")
def paged(folder, workloads):  # type: ignore[no-untyped-def]
    """attention=paged outputs per workload (the oracle), from one engine."""
    llm = LLM(model=folder, attention="paged")
    return {name: serve(llm, reqs)[0] for name, reqs in workloads.items()}


def serve(llm: LLM, reqs):  # type: ignore[no-untyped-def]
    m = run_requests(llm.engine, reqs)
    return [o.outputs[0].token_ids for o in m["_outputs"]], m


@pytest.mark.parametrize("name", ["shared_prefix", "few_shot", "multi_turn"])
def test_radix_equals_paged(folder, workloads, paged, name) -> None:  # type: ignore[no-untyped-def]
    reqs = workloads[name]
    radix_llm = LLM(model=folder, attention="radix")
    radix, m = serve(radix_llm, reqs)
    assert radix == paged[name]
    assert m["prefix_hit_rate"] > 0.3, m  # the shared parts were reused, not recomputed
    assert radix_llm.engine.stats.computed_prompt_tokens < radix_llm.engine.stats.prompt_tokens


@pytest.mark.parametrize("name", ["shared_prefix", "multi_turn"])
def test_radix_under_eviction_and_preemption(folder, workloads, paged, name) -> None:  # type: ignore[no-untyped-def]
    reqs = workloads[name]
    # 384 KV slots hold far less than the workload's shared data: the tree must evict,
    # and running sequences get preempted; 24-token chunks force chunked prefill too
    small = LLM(model=folder, attention="radix", kv_cache_tokens=384, max_model_len=384,
                max_num_batched_tokens=24)
    radix, m = serve(small, reqs)
    assert radix == paged[name]
    assert m["evictions"] > 0
    if name == "shared_prefix":
        assert small.engine.scheduler.num_preemptions > 0


def test_fcfs_policy_is_lossless_too(folder, workloads, paged) -> None:  # type: ignore[no-untyped-def]
    reqs = workloads["shared_prefix"]
    fcfs, m = serve(LLM(model=folder, attention="radix", overrides=["attention.schedule_policy=fcfs"]), reqs)
    # FCFS admits the first wave together (no in-flight deferral), so fewer hits than lpm
    assert fcfs == paged["shared_prefix"] and m["prefix_hit_rate"] > 0


def test_prompt_logprobs_correct_for_cached_prompt(folder, workloads) -> None:  # type: ignore[no-untyped-def]
    reqs = workloads["shared_prefix"]
    prompt = {"prompt_token_ids": reqs[0].prompt_token_ids}
    sp = SamplingParams(temperature=0, max_tokens=3, prompt_logprobs=1, logprobs=1)
    ref = LLM(model=folder, attention="paged").generate([prompt], sp, use_tqdm=False)[0]
    radix = LLM(model=folder, attention="radix")
    serve(radix, reqs)  # the tree now holds this prompt's blocks
    assert radix.engine.scheduler.cache.peek_prefix(  # type: ignore[attr-defined]
        _seq(prompt["prompt_token_ids"])) > 0
    got = radix.generate([prompt], sp, use_tqdm=False)[0]
    assert got.outputs[0].token_ids == ref.outputs[0].token_ids
    assert len(got.prompt_logprobs) == len(ref.prompt_logprobs)
    for a, b in zip(got.prompt_logprobs[1:], ref.prompt_logprobs[1:]):
        assert a.keys() == b.keys()
        assert all(abs(a[t].logprob - b[t].logprob) < 1e-4 for t in a)


def _seq(ids):  # type: ignore[no-untyped-def]
    from infer.sequence import Sequence

    return Sequence(-1, "probe", None, list(ids), SamplingParams(), 0.0)

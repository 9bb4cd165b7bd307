"""Greedy speculation is lossless in the engine: every proposer gives the tokens of spec=none,
on a mixed batch of 32 prompts, with paged and radix caches, under chunked prefill with a tiny
token budget and under preemption (the tests check that both happened, that drafts were
proposed and accepted, that no intermediate prefill chunk drafted, and that every KV block,
the draft model's included, is released at the end)."""

from __future__ import annotations

import gc

import pytest
from spec_engine_utils import (  # type: ignore[import-not-found]
    PROPOSERS,
    ScheduleProbe,
    assert_kv_released,
    assert_radix_holds_accepted_only,
    generate,
    spec_prompts,
    token_ids,
)

from infer import LLM, SamplingParams

N_PROMPTS = 32
GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
# tiny-model engines: a 16-token step budget chunks every prompt longer than 16; 144 KV slots
# (9 blocks) hold one long prompt with its output, so running sequences get preempted
TIGHT = {"max_num_batched_tokens": 16, "kv_cache_tokens": 144, "max_model_len": 144, "threads": 1}


@pytest.fixture(scope="module")
def plain(tiny_checkpoint) -> dict:  # type: ignore[no-untyped-def]
    """Per family: (folder, prompts, spec=none outputs with default engine settings)."""
    out = {}
    for fam in ("llama", "qwen2"):
        folder = str(tiny_checkpoint(fam))
        llm = LLM(model=folder, threads=1)
        prompts = spec_prompts(llm.get_tokenizer(), N_PROMPTS, seed=1)
        outs = generate(llm, prompts, GREEDY)
        out[fam] = (folder, prompts, outs)
    return out


def check_lossless(llm: LLM, prompts: list[list[int]], ref: list, probe: ScheduleProbe) -> None:  # type: ignore[type-arg]
    e = llm.engine
    outs = generate(llm, prompts, GREEDY)
    bad = [i for i, (a, b) in enumerate(zip(token_ids(outs), token_ids(ref))) if a != b]
    assert not bad, f"prompts {bad} differ from spec=none"
    assert [o.outputs[0].finish_reason for o in outs] == [o.outputs[0].finish_reason for o in ref]
    # the regime really was the one named
    assert probe.partial_chunks > 0, "no prefill was chunked"
    assert not probe.draft_in_partial, f"sequences drafted inside a prefill chunk: {probe.draft_in_partial}"
    assert probe.mixed_steps > 0, "drafting decodes never shared a step with a prefill chunk"
    assert probe.max_fed <= e.scheduler.max_num_batched_tokens
    assert e.scheduler.num_preemptions > 0, "nothing was preempted"
    assert e.stats.spec_drafted > 0 and e.stats.spec_accepted > 0, (e.stats.spec_drafted, e.stats.spec_accepted)
    assert e.stats.spec_accepted <= e.stats.spec_drafted
    assert_kv_released(e)
    cache = e.scheduler.cache
    if cache.reuses_prefixes:
        assert cache.stats()["cached_prompt_tokens"] > 0, "the radix cache never hit"
        done = [list(p) + o.outputs[0].token_ids for p, o in zip(prompts, outs)]
        assert assert_radix_holds_accepted_only(cache, done) > 0


CASES = [(name, fam, att) for name in PROPOSERS for fam, att in (("llama", "paged"), ("qwen2", "radix"))]


@pytest.mark.parametrize(("proposer", "family", "attention"), CASES)
def test_greedy_spec_equals_plain(plain, proposer: str, family: str, attention: str) -> None:  # type: ignore[no-untyped-def]
    folder, prompts, ref = plain[family]
    spec, ov = PROPOSERS[proposer]
    llm = LLM(model=folder, spec=spec, attention=attention, overrides=ov + ["spec.policy.kind=fixed"], **TIGHT)
    probe = ScheduleProbe().attach(llm.engine)
    check_lossless(llm, prompts, ref, probe)
    del llm
    gc.collect()


def test_adaptive_policy_is_lossless(plain) -> None:  # type: ignore[no-untyped-def]
    """The default (adaptive) policy changes k per step and sequence; tokens do not change."""
    folder, prompts, ref = plain["llama"]
    llm = LLM(model=folder, spec="ngram", attention="radix", **TIGHT)
    probe = ScheduleProbe().attach(llm.engine)
    check_lossless(llm, prompts, ref, probe)


# ---- SmolLM2 (fp32), prompt lookup -------------------------------------------------------
SMOL_GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def smol_plain(smollm2) -> tuple[list[list[int]], list]:  # type: ignore[no-untyped-def,type-arg]
    assert smollm2.config.spec.name == "none"
    prompts = spec_prompts(smollm2.get_tokenizer(), N_PROMPTS, seed=2, max_len=44)
    return prompts, generate(smollm2, prompts, SMOL_GREEDY)


@pytest.mark.parametrize("attention", ["paged", "radix"])
def test_smollm2_ngram_equals_plain(smol_plain, attention: str) -> None:  # type: ignore[no-untyped-def]
    prompts, ref = smol_plain
    llm = LLM(spec="ngram", attention=attention, overrides=["spec.policy.kind=fixed", "spec.num_tokens=4"],
              max_num_batched_tokens=24, kv_cache_tokens=96, max_model_len=96)
    probe = ScheduleProbe().attach(llm.engine)
    outs = generate(llm, prompts, SMOL_GREEDY)
    bad = [i for i, (a, b) in enumerate(zip(token_ids(outs), token_ids(ref))) if a != b]
    assert not bad, f"prompts {bad} differ from spec=none"
    e = llm.engine
    assert probe.partial_chunks > 0 and not probe.draft_in_partial
    assert e.scheduler.num_preemptions > 0
    assert e.stats.spec_drafted > 0 and e.stats.spec_accepted > 0
    assert_kv_released(e)
    del llm, e
    gc.collect()

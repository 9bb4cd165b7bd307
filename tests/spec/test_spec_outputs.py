"""Speculation in the engine, request by request: a draft identical to the target accepts
every draft (acceptance length k+1 per step), a random draft accepts almost nothing, seeded
sampling is reproducible across runs and batch compositions, logprobs of accepted tokens are
the target's, and EOS / stop ids / stop strings / max_tokens / max_model_len cut an accepted
run at the same token as plain decoding."""

from __future__ import annotations

import dataclasses
import math

import pytest
from spec_engine_utils import generate, spec_prompts, token_ids  # type: ignore[import-not-found]

from infer import LLM, SamplingParams

K = 3
STEPS = 5
M = 1 + STEPS * (K + 1)  # the prefill samples one token, then STEPS verify steps of k+1 tokens
FIXED = ["spec.policy.kind=fixed", f"spec.num_tokens={K}"]
IDENTICAL = {"draft": ("draft", []), "self-nothing-skipped": ("self", ["spec.mode=layers", "spec.skip_layers=[]"])}


@pytest.fixture(scope="module")
def case(tiny_checkpoint):  # type: ignore[no-untyped-def]
    """Tiny Llama folder, 8 prompts, and the plain engine's greedy outputs (M tokens)."""
    folder = str(tiny_checkpoint("llama"))
    plain = LLM(model=folder, threads=1)
    prompts = spec_prompts(plain.get_tokenizer(), 8, seed=3, max_len=40)
    sp = SamplingParams(temperature=0, max_tokens=M, ignore_eos=True)
    return folder, prompts, plain, generate(plain, prompts, sp)


@pytest.mark.parametrize("name", list(IDENTICAL))
def test_identical_draft_accepts_every_token(case, name: str) -> None:  # type: ignore[no-untyped-def]
    folder, prompts, _, ref = case
    spec, ov = IDENTICAL[name]
    llm = LLM(model=folder, spec=spec, overrides=ov + FIXED, threads=1)
    outs = generate(llm, prompts, SamplingParams(temperature=0, max_tokens=M, ignore_eos=True))
    assert token_ids(outs) == token_ids(ref)
    st = llm.engine.stats
    assert st.spec_drafted == st.spec_accepted == STEPS * K * len(prompts)
    assert st.acceptance_rate == 1.0 and st.acceptance_length == K + 1
    for o in outs:
        m = o.metrics
        assert m["acceptance_rate"] == 1.0 and m["acceptance_length"] == K + 1 and m["spec_steps"] == STEPS
        # per step: tokens appended in one step share a timestamp; every run is k+1 long
        times = m["token_times"][1:]
        runs = [len([t for t in times if t == u]) for u in sorted(set(times))]
        assert runs == [K + 1] * STEPS


def test_random_draft_accepts_almost_nothing(case, tmp_path, tokenizer_dir) -> None:  # type: ignore[no-untyped-def]
    from infer.models.tiny import make_tiny_checkpoint

    folder, prompts, _, ref = case
    make_tiny_checkpoint(tmp_path, "llama", tokenizer_dir, seed=1)  # same shape, other weights
    llm = LLM(model=folder, spec="draft", overrides=[f"spec.model={tmp_path}"] + FIXED, threads=1)
    outs = generate(llm, prompts, SamplingParams(temperature=0, max_tokens=M, ignore_eos=True))
    assert token_ids(outs) == token_ids(ref)
    st = llm.engine.stats
    assert st.spec_drafted >= len(prompts) * (M - 1)  # it kept drafting (fixed policy) ...
    assert st.acceptance_rate < 0.1  # ... and the target rejected nearly all of it


# ---- seeded sampling -------------------------------------------------------------------
SEEDED = SamplingParams(temperature=1.0, top_p=0.9, top_k=40, seed=1234, max_tokens=24, ignore_eos=True)
OTHERS = [
    SamplingParams(temperature=0, max_tokens=9, ignore_eos=True),
    SamplingParams(temperature=0.7, max_tokens=30),
    SamplingParams(temperature=1.2, top_k=5, seed=7, max_tokens=17, ignore_eos=True),
    SamplingParams(temperature=0.9, min_p=0.1, presence_penalty=0.5, max_tokens=12, ignore_eos=True),
]
SEED_CASES = {"ngram": ("ngram", []), "self-layers": ("self", ["spec.mode=layers", "spec.skip_layers=[1]"])}


@pytest.mark.parametrize("name", list(SEED_CASES))
def test_seeded_sampling_is_reproducible(case, name: str) -> None:  # type: ignore[no-untyped-def]
    folder, prompts, _, _ = case
    spec, ov = SEED_CASES[name]

    def build() -> LLM:  # the default (adaptive) policy: k varies with the batch for others
        return LLM(model=folder, spec=spec, overrides=ov, threads=1)

    llm = build()
    target = prompts[1]
    alone = token_ids(generate(llm, [target], SEEDED))[0]
    assert token_ids(generate(llm, [target], SEEDED))[0] == alone  # same engine, again
    assert token_ids(generate(build(), [target], SEEDED))[0] == alone  # a fresh engine
    batch = [prompts[0], prompts[2], target, prompts[3], prompts[5]]
    params = OTHERS[:2] + [SEEDED] + OTHERS[2:]
    outs = generate(llm, batch, params)
    assert token_ids(outs)[2] == alone
    assert llm.engine.stats.spec_drafted > 0
    # the seed really drives the draws
    assert token_ids(generate(llm, [target], dataclasses.replace(SEEDED, seed=99)))[0] != alone


# ---- logprobs and stopping -------------------------------------------------------------
def assert_same_output(a, b) -> None:  # type: ignore[no-untyped-def]
    x, y = a.outputs[0], b.outputs[0]
    assert x.token_ids == y.token_ids
    assert (x.finish_reason, x.stop_reason, x.text) == (y.finish_reason, y.stop_reason, y.text)
    if y.logprobs is not None:
        assert x.logprobs is not None and len(x.logprobs) == len(y.logprobs)
        for d, e in zip(x.logprobs, y.logprobs):
            assert set(d) == set(e)
            for t in d:
                assert d[t].rank == e[t].rank
                assert math.isclose(d[t].logprob, e[t].logprob, abs_tol=1e-4)


@pytest.fixture(scope="module")
def spec_llm(case) -> LLM:  # type: ignore[no-untyped-def]
    """spec=draft identical to the target, k=3: every step accepts a run of 4 tokens."""
    return LLM(model=case[0], spec="draft", overrides=FIXED, threads=1)


def test_logprobs_equal_plain(case, spec_llm) -> None:  # type: ignore[no-untyped-def]
    folder, prompts, plain, _ = case
    sp = SamplingParams(temperature=0, max_tokens=M, ignore_eos=True, logprobs=3)
    ngram = LLM(model=folder, spec="ngram", overrides=FIXED, threads=1)
    ref = generate(plain, prompts, sp)
    for llm in (spec_llm, ngram):
        for a, b in zip(generate(llm, prompts, sp), ref):
            assert_same_output(a, b)
            assert math.isclose(a.outputs[0].cumulative_logprob, b.outputs[0].cumulative_logprob, abs_tol=1e-3)
    assert ngram.engine.stats.spec_accepted > 0


def test_sampled_logprobs_are_the_targets(case) -> None:  # type: ignore[no-untyped-def]
    """Sampled with a layer-skip draft (outputs differ from plain decoding's): each accepted
    token's logprob equals the plain engine's score of the same text."""
    folder, prompts, plain, _ = case
    llm = LLM(model=folder, spec="self", overrides=["spec.skip_layers=[1]"] + FIXED, threads=1)
    sp = SamplingParams(temperature=1.0, seed=5, max_tokens=16, ignore_eos=True, logprobs=0)
    outs = generate(llm, prompts[:4], sp)
    assert llm.engine.stats.spec_accepted > 0
    for p, o in zip(prompts[:4], outs):
        gen = o.outputs[0].token_ids
        scored = generate(plain, [p + gen], SamplingParams(max_tokens=1, prompt_logprobs=0))[0].prompt_logprobs
        for j, (t, d) in enumerate(zip(gen, o.outputs[0].logprobs)):
            assert math.isclose(d[t].logprob, scored[len(p) + j][t].logprob, abs_tol=1e-4)


CUT_AT = [1, 2, 3, 5, 6, 7, 10]  # output positions: inside accepted runs and at their ends


def test_stops_cut_an_accepted_run_like_plain(case, spec_llm) -> None:  # type: ignore[no-untyped-def]
    _folder, prompts, plain, ref = case
    tok = plain.get_tokenizer()
    base = {"temperature": 0, "logprobs": 1}
    for p, r in zip(prompts[:4], ref[:4]):
        full = r.outputs[0].token_ids
        variants = []
        for j in CUT_AT:
            variants.append(SamplingParams(**base, max_tokens=M, ignore_eos=True, stop_token_ids=[full[j]]))
            variants.append(SamplingParams(**base, max_tokens=j + 1, ignore_eos=True))
            piece = tok.decode(full[j : j + 1]).strip()
            if piece:
                variants.append(SamplingParams(**base, max_tokens=M, ignore_eos=True, stop=[piece]))
                variants.append(SamplingParams(**base, max_tokens=M, ignore_eos=True, stop=[piece],
                                               include_stop_str_in_output=True))
        got = generate(spec_llm, [p] * len(variants), variants)
        want = generate(plain, [p] * len(variants), variants)
        for a, b in zip(got, want):
            assert_same_output(a, b)
        assert sum(b.outputs[0].finish_reason == "stop" for b in want) >= len(CUT_AT)
        # EOS: make a token of the output the end-of-sequence token, in both engines
        eos = {id(e): e.eos_token_ids for e in (spec_llm.engine, plain.engine)}
        for j in CUT_AT:
            for e in (spec_llm.engine, plain.engine):
                e.eos_token_ids = [full[j]]
            try:
                sp = SamplingParams(**base, max_tokens=M)
                a, b = generate(spec_llm, [p], sp)[0], generate(plain, [p], sp)[0]
            finally:
                for e in (spec_llm.engine, plain.engine):
                    e.eos_token_ids = eos[id(e)]
            assert_same_output(a, b)
            assert b.outputs[0].finish_reason == "stop" and len(b.outputs[0].token_ids) == full.index(full[j]) + 1


@pytest.mark.parametrize("room", [2, 5, 7])
def test_max_model_len_cuts_an_accepted_run_like_plain(case, room: int) -> None:  # type: ignore[no-untyped-def]
    folder, prompts, _, ref = case
    p = prompts[0]
    sp = SamplingParams(temperature=0, max_tokens=M, ignore_eos=True)
    lim = {"max_model_len": len(p) + room, "threads": 1}
    a = generate(LLM(model=folder, spec="draft", overrides=FIXED, **lim), [p], sp)[0]
    b = generate(LLM(model=folder, **lim), [p], sp)[0]
    assert_same_output(a, b)
    assert b.outputs[0].finish_reason == "length" and b.outputs[0].token_ids == ref[0].outputs[0].token_ids[:room]

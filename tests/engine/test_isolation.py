"""Regression tests for sampling exactness and request isolation (one bad or abandoned
request never changes another's result nor wedges the engine)."""

from __future__ import annotations

import pytest
import torch

from infer import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(model="tiny", max_model_len=128, threads=1)


def ids(outs) -> list[list[int]]:  # type: ignore[no-untyped-def]
    return [o.outputs[0].token_ids for o in outs]


def assert_idle(llm: LLM) -> None:
    """Nothing queued, running or holding KV blocks."""
    e = llm.engine
    assert not e.has_unfinished()
    assert not e.scheduler.waiting and not e.scheduler.running
    assert e.scheduler.cache.allocator.num_free == e.scheduler.cache.num_blocks


def script_tokens(llm: LLM, script: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the model 'choose' the scripted tokens, one per step (single request)."""
    runner = llm.engine.runner
    orig = runner.execute
    calls = iter(script)

    def execute(*a, **k):  # type: ignore[no-untyped-def]
        out = orig(*a, **k)
        forced = torch.full_like(out, -20.0)
        forced[:, next(calls)] = 20.0
        return forced

    monkeypatch.setattr(runner, "execute", execute)


# ---- 1. stop strings after a long token ------------------------------------------------
def test_stop_string_found_after_a_long_token(llm: LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = llm.get_tokenizer()
    long_tok = next(i for i in range(tok.vocab_size) if len(tok.decode([i])) > 40 and "\n" in tok.decode([i]))
    head = tok.encode("def f():", add_special_tokens=False)
    script_tokens(llm, head + [long_tok] + [tok.encode("x", add_special_tokens=False)[0]] * 10, monkeypatch)
    sp = SamplingParams(temperature=0, max_tokens=12, stop=["\n"], ignore_eos=True)
    out = llm.generate([{"prompt_token_ids": [5, 6, 7]}], sp, use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == "\n"
    assert out.text == "def f():"
    assert len(out.token_ids) == len(head) + 1


# ---- 3-5. sampler ------------------------------------------------------------------------
def test_tiny_temperature_is_greedy(llm: LLM) -> None:
    p = [{"prompt_token_ids": [11, 12, 13, 14]}]
    greedy = ids(llm.generate(p, GREEDY, use_tqdm=False))
    tiny_t = SamplingParams(temperature=1e-40, max_tokens=6, ignore_eos=True, seed=1)
    assert ids(llm.generate(p, tiny_t, use_tqdm=False)) == greedy


def test_top_p_is_measured_after_top_k() -> None:
    from infer.sampling import top_k_top_p_min_p

    logits = torch.log(torch.tensor([[0.4, 0.3, 0.3]]))
    kept = top_k_top_p_min_p(logits, torch.tensor([2]), torch.tensor([0.5]), torch.tensor([0.0]))
    # after top-k the distribution is [4/7, 3/7]: top_p=0.5 keeps the first token only
    assert torch.isfinite(kept).tolist() == [[True, False, False]]


def test_untruncated_row_is_untouched() -> None:
    from infer.sampling import top_k_top_p_min_p

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 49152, generator=g) * 4
    v = logits.shape[1]
    out = top_k_top_p_min_p(logits, torch.tensor([v, 5]), torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]))
    assert torch.equal(out[0], logits[0])  # top_p=1, no top-k: every token stays
    assert int(torch.isfinite(out[1]).sum()) == 5


def test_seeded_row_independent_of_other_rows_truncation(llm: LLM) -> None:
    a = ({"prompt_token_ids": [21, 22, 23]}, SamplingParams(temperature=1.0, seed=7, max_tokens=12, ignore_eos=True))
    alone = ids(llm.generate([a[0]], [a[1]], use_tqdm=False))[0]
    others = [
        ({"prompt_token_ids": [31, 32]}, SamplingParams(temperature=0.8, top_k=5, seed=1, max_tokens=12)),
        ({"prompt_token_ids": [41]}, SamplingParams(temperature=1.2, top_p=0.5, max_tokens=12)),
        ({"prompt_token_ids": [51, 52]}, SamplingParams(temperature=0.9, min_p=0.2, max_tokens=12)),
        ({"prompt_token_ids": [61, 62]}, SamplingParams(temperature=1.0, repetition_penalty=1.3, max_tokens=12)),
        ({"prompt_token_ids": [71]}, SamplingParams(temperature=0, max_tokens=12)),
    ]
    mixed = llm.generate([a[0]] + [o[0] for o in others], [a[1]] + [o[1] for o in others], use_tqdm=False)
    assert mixed[0].outputs[0].token_ids == alone


def test_sampler_process_leaves_untruncated_probs_exact() -> None:
    from infer.sampling import RowContext, Sampler
    from infer.sequence import Sequence

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1000, generator=g) * 5
    plain = Sequence(0, "a", None, [1], SamplingParams(temperature=0.7), 0.0)
    trunc = Sequence(1, "b", None, [1], SamplingParams(temperature=0.7, top_k=3, top_p=0.9), 0.0)
    proc = Sampler(1000).process(logits, [RowContext.of(plain), RowContext.of(trunc)])
    assert proc.probs is not None
    assert torch.equal(proc.probs[0], (logits[0] / 0.7).softmax(-1))


# ---- 8. radix: an unusable prefix match is released ----------------------------------
@pytest.mark.parametrize("policy", ["fcfs", "lpm"])
def test_radix_small_cache_two_requests_both_finish(policy: str) -> None:
    # 4 blocks of 16: the second request matches the warm prefix but cannot allocate the
    # rest; its pinned match must not keep the first from growing (fcfs used to wedge here)
    llm = LLM(model="tiny", attention="radix", kv_cache_tokens=64, max_model_len=64, threads=1,
              overrides=[f"attention.schedule_policy={policy}"])
    shared = list(range(100, 132))
    warm = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    llm.generate([{"prompt_token_ids": shared}], warm, use_tqdm=False)  # prefix now in the tree
    reqs = [{"prompt_token_ids": list(range(300, 320))}, {"prompt_token_ids": shared + [7, 8, 9]}]
    sps = [SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
           SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)]
    both = llm.generate(reqs, sps, use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in both] == [40, 20]
    for r, sp, got in zip(reqs, sps, ids(both)):
        solo = LLM(model="tiny", max_model_len=64, threads=1)
        assert ids(solo.generate([r], sp, use_tqdm=False))[0] == got
    # radix keeps finished blocks cached (by design): only the tree may still hold them
    e = llm.engine
    assert not e.has_unfinished() and not e.scheduler.waiting and not e.scheduler.running
    tree = {n.block for n in e.scheduler.cache._iter_nodes()}
    assert all(c == 0 or (b in tree and c == 1) for b, c in enumerate(e.scheduler.cache.allocator.ref_counts))


# ---- 9. per-request failures ----------------------------------------------------------
@pytest.mark.parametrize("bad", [
    dict(logprobs=10**6), dict(prompt_logprobs=10**6),
    dict(stop_token_ids=[10**6], min_tokens=2),
])
def test_out_of_vocab_params_rejected_at_admission(llm: LLM, bad: dict) -> None:  # type: ignore[type-arg]
    name = next(iter(bad)) if "stop_token_ids" not in bad else "stop_token_ids"
    before = ids(llm.generate([{"prompt_token_ids": [3, 4, 5]}], GREEDY, use_tqdm=False))
    with pytest.raises(ValueError, match=name):
        llm.generate([{"prompt_token_ids": [3, 4, 5]}], SamplingParams(max_tokens=4, **bad), use_tqdm=False)
    assert_idle(llm)
    assert ids(llm.generate([{"prompt_token_ids": [3, 4, 5]}], GREEDY, use_tqdm=False)) == before


def test_failure_inside_a_step_fails_that_request_alone(llm: LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    good = {"prompt_token_ids": [8, 9, 10, 11]}
    solo = ids(llm.generate([good], GREEDY, use_tqdm=False))
    orig = llm.engine.sampler.process

    def process(logits, rows):  # type: ignore[no-untyped-def]
        if any(r.seq.params.max_tokens == 5 for r in rows):
            raise RuntimeError("injected sampler failure")
        return orig(logits, rows)

    monkeypatch.setattr(llm.engine.sampler, "process", process)
    bad_sp = SamplingParams(temperature=0, max_tokens=5)
    outs = llm.generate([good, {"prompt_token_ids": [1, 2]}], [GREEDY, bad_sp], use_tqdm=False)
    assert outs[1].outputs[0].finish_reason == "error" and "injected" in (outs[1].error or "")
    assert ids(outs[:1]) == solo
    monkeypatch.undo()
    assert_idle(llm)
    assert ids(llm.generate([good], GREEDY, use_tqdm=False)) == solo


# ---- 10. seeds ------------------------------------------------------------------------
def test_max_seed_with_n2_works_and_overflow_is_named(llm: LLM) -> None:
    sp = SamplingParams(temperature=1.0, seed=2**64 - 1, n=2, max_tokens=4, ignore_eos=True)
    out = llm.generate([{"prompt_token_ids": [5, 6]}], sp, use_tqdm=False)[0]
    assert len(out.outputs) == 2 and all(len(o.token_ids) == 4 for o in out.outputs)
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(seed=2**64)
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(seed=-1)
    assert_idle(llm)


# ---- 11. abandoned streams and interrupted generate ----------------------------------------
def test_abandoned_stream_leaves_nothing_behind(llm: LLM) -> None:
    it = llm.stream({"prompt_token_ids": [9, 9, 9]}, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    next(it)
    next(it)
    it.close()
    assert_idle(llm)
    assert len(ids(llm.generate([{"prompt_token_ids": [1, 2, 3]}], GREEDY, use_tqdm=False))[0]) == 6


def test_interrupted_generate_leaves_nothing_behind(llm: LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    orig = llm.engine.step
    n = {"calls": 0}

    def step():  # type: ignore[no-untyped-def]
        n["calls"] += 1
        if n["calls"] == 3:
            raise KeyboardInterrupt
        return orig()

    monkeypatch.setattr(llm.engine, "step", step)
    with pytest.raises(KeyboardInterrupt):
        llm.generate([{"prompt_token_ids": [4, 4]}] * 3, SamplingParams(max_tokens=20, ignore_eos=True), use_tqdm=False)
    monkeypatch.undo()
    assert_idle(llm)
    assert len(ids(llm.generate([{"prompt_token_ids": [1, 2, 3]}], GREEDY, use_tqdm=False))[0]) == 6


def test_abort_returns_final_output_and_frees(llm: LLM) -> None:
    e = llm.engine
    rid = e.add_request(None, [1, 2, 3, 4], SamplingParams(max_tokens=50, ignore_eos=True))
    e.step()
    e.step()
    out = e.abort(rid)
    assert out is not None and out.finished
    assert out.outputs[0].finish_reason == "abort" and len(out.outputs[0].token_ids) >= 1
    assert e.abort(rid) is None
    assert_idle(llm)


# ---- 12. unchunkable prompts ----------------------------------------------------------------
def test_unchunkable_prompt_rejected_alone() -> None:
    llm = LLM(model="tiny", max_model_len=128, chunked_prefill=False, max_num_batched_tokens=16, threads=1)
    with pytest.raises(ValueError, match="chunked_prefill.*max_num_batched_tokens|max_num_batched_tokens.*chunked_prefill"):
        llm.generate([{"prompt_token_ids": list(range(10, 40))}], GREEDY, use_tqdm=False)
    out = llm.generate([{"prompt_token_ids": list(range(10, 20))}], GREEDY, use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 6
    assert_idle(llm)


# ---- lpm aging ------------------------------------------------------------------------------
def test_lpm_admits_a_cold_request_within_max_wait() -> None:
    from infer.cache.radix import RadixKVCacheManager
    from infer.scheduler import Scheduler
    from infer.sequence import Sequence

    cache = RadixKVCacheManager(num_blocks=64, block_size=4)
    sched = Scheduler(cache, max_num_seqs=1, max_num_batched_tokens=64, policy="lpm", lpm_max_wait_steps=3)
    hot = [1, 2, 3, 4, 5, 6, 7, 8]
    ids_ = iter(range(1000))

    def seq(tokens: list[int]) -> Sequence:
        return Sequence(next(ids_), "r", None, list(tokens), SamplingParams(max_tokens=1), 0.0)

    warm = seq(hot + [9])
    sched.add(warm)
    (b,) = sched.schedule()
    warm.num_computed_tokens = warm.num_tokens
    cache.on_tokens_computed(warm)
    sched.finish(warm)
    cold = seq([50, 51, 52, 53, 54])
    sched.add(cold)
    admitted_at = None
    for step in range(10):
        sched.add(seq(hot + [100 + step]))  # a stream of cache hits keeps arriving
        batch = sched.schedule()
        for item in batch:
            if item.seq is cold:
                admitted_at = step
            item.seq.num_computed_tokens = item.seq.num_tokens
            sched.finish(item.seq)
        if admitted_at is not None:
            break
    assert admitted_at is not None and admitted_at <= 4


def test_interleaved_streams_each_get_their_final_output(llm: LLM) -> None:
    sp_a = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    sp_b = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    want_a = ids(llm.generate([{"prompt_token_ids": [1, 2, 3]}], sp_a, use_tqdm=False))[0]
    want_b = ids(llm.generate([{"prompt_token_ids": [4, 5, 6]}], sp_b, use_tqdm=False))[0]
    a = llm.stream({"prompt_token_ids": [1, 2, 3]}, sp_a)
    b = llm.stream({"prompt_token_ids": [4, 5, 6]}, sp_b)
    next(a)
    next(b)
    last_a = list(a)[-1]  # b finishes during a's steps
    last_b = list(b)[-1]
    assert last_a.finished and last_a.outputs[0].token_ids == want_a
    assert last_b.finished and last_b.outputs[0].token_ids == want_b
    # a generate call while a stream is open: both complete
    c = llm.stream({"prompt_token_ids": [4, 5, 6]}, sp_b)
    next(c)
    assert ids(llm.generate([{"prompt_token_ids": [1, 2, 3]}], sp_a, use_tqdm=False))[0] == want_a
    assert list(c)[-1].outputs[0].token_ids == want_b
    assert_idle(llm)
    assert not llm._mailbox

"""Property-based invariants of the engine under random mixes of requests (issue 11).

Each example is a random workload driven at the Engine level: requests arrive at random
steps with random prompts (shared prefixes, so radix hits happen) and sampling parameters
(greedy, seeded, unseeded, n > 1, penalties, truncation, stop ids/strings, logprobs), some
are aborted at a random step, some are consumed through ``LLM.stream`` and dropped midway,
and some are bad and must be refused at admission. The KV cache is small, so sequences are
preempted and recomputed. Then:

- after every step, every KV block's reference count equals the references that exist
  (block tables, plus the radix tree's own), the free list is exactly the blocks at zero, and
  only tree blocks are shared;
- after the engine drains, no sequence holds anything: every block is free, or (radix)
  held by the tree alone with refcount exactly 1; no per-sequence state is left anywhere
  (scheduler, cache, proposer, draft policy);
- every greedy or seeded request's tokens (and finish reasons, logprobs) equal its solo run
  on a separate engine with a roomy cache; an aborted or dropped request's tokens are a
  prefix of its solo run;
- every bad request raised ValueError naming its field and left nothing queued;
- the engine then serves a fresh request exactly.

The reference for greedy requests is the plain engine (paged, no speculation). Seeded
*sampled* requests under ``spec=ngram`` are compared with a roomy ``spec=ngram`` engine: the
rejection sampler draws one uniform per draft token from the request's generator, so a
seeded stream under speculation is a function of the request alone but not the same stream
as without speculation (exact in distribution, not token for token).

One engine per configuration is reused across examples (it must be reusable anyway; the
radix tree keeps what earlier examples cached, so later ones hit it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings  # a dev extra (pyproject [dev])
from hypothesis import strategies as st

from infer import LLM, SamplingParams
from infer.engine import Engine
from infer.outputs import RequestOutput

MAX_LEN = 64  # max_model_len of every engine here (a finish reason depends on it)
VOCAB = 49152  # the tiny model shares SmolLM2's tokenizer and vocabulary
# shared prompt heads: a radix cache (block 16) can reuse the first one or two blocks
PREFIXES = ([], list(range(100, 116)), list(range(100, 132)), [7, 8, 9] * 6)

# name -> LLM keyword arguments; small caches (8-10 blocks of 16) so preemption happens
CONFIGS: dict[str, dict[str, Any]] = {
    "paged": {"attention": "paged", "kv_cache_tokens": 128, "max_num_batched_tokens": 24},
    "radix": {"attention": "radix", "kv_cache_tokens": 128, "max_num_batched_tokens": 24},  # lpm
    # default token budget: a small one can cut a seeded request's draft slots (budget - 1),
    # which would tie its random stream to the batch
    "radix-ngram": {"attention": "radix", "spec": "ngram", "kv_cache_tokens": 160,
                    "overrides": ["attention.schedule_policy=fcfs"]},
}

# (field, value): set on a valid SamplingParams after construction, so the engine's own
# admission check is what refuses it; the error must name "SamplingParams.<field>="
BAD_PARAMS: list[tuple[str, Any]] = [
    ("temperature", -0.5), ("temperature", math.nan), ("temperature", "hot"),
    ("top_p", 0.0), ("top_p", 1.5), ("top_k", -3), ("top_k", 2.5), ("min_p", 1.5),
    ("repetition_penalty", 0.0), ("presence_penalty", 2.5), ("frequency_penalty", -3.0),
    ("max_tokens", 0), ("min_tokens", 10**6), ("n", 0), ("seed", 2**64), ("seed", -1),
    ("logprobs", VOCAB + 1), ("logprobs", -1), ("prompt_logprobs", VOCAB + 1),
    ("stop_token_ids", [VOCAB]), ("stop_token_ids", [-1]), ("stop", [""]),
]
# prompt-level refusals: (prompt, text the error must contain)
BAD_PROMPTS: list[tuple[list[int], str]] = [
    ([], "prompt"), ([5, VOCAB + 3], "prompt token ids"), (list(range(1, MAX_LEN + 1)), "max_model_len"),
]


# ---- workload ---------------------------------------------------------------------------------
@dataclass
class Req:
    """One request of a workload. kind: run (to the end), abort (at ``arrival + delay``
    ticks), stream (through LLM.stream; dropped after ``delay`` yields when delay > 0),
    bad (refused at admission, naming ``bad_field``)."""

    kind: str
    arrival: int
    prompt: list[int]
    params: SamplingParams
    delay: int = 0
    bad_field: str = ""
    rid: str | None = None
    final: RequestOutput | None = None
    seen: list[RequestOutput] = field(default_factory=list)


@st.composite
def good_params(draw: st.DrawFn) -> SamplingParams:
    mode = draw(st.sampled_from(["greedy", "greedy", "seeded", "seeded", "unseeded"]))
    max_tokens = draw(st.integers(1, 20))
    kw: dict[str, Any] = {
        "max_tokens": max_tokens,
        "ignore_eos": draw(st.booleans()),
        "n": draw(st.sampled_from([1, 1, 1, 2, 3])),
        "min_tokens": draw(st.sampled_from([0, 0, min(2, max_tokens)])),
        "logprobs": draw(st.sampled_from([None, None, 0, 2])),
        "prompt_logprobs": draw(st.sampled_from([None, None, None, 1])),
        "stop_token_ids": draw(st.sampled_from([[], [], [3], [10, 11]])),
        "stop": draw(st.sampled_from([None, None, None, ["e"], ["\n"]])),
        "repetition_penalty": draw(st.sampled_from([1.0, 1.0, 1.3])),
        "presence_penalty": draw(st.sampled_from([0.0, 0.0, 0.5])),
        "frequency_penalty": draw(st.sampled_from([0.0, 0.0, -0.5])),
    }
    if mode == "greedy":
        kw["temperature"] = draw(st.sampled_from([0.0, 0.0, 1e-9]))  # tiny temperatures are greedy
    else:
        kw.update(
            temperature=draw(st.sampled_from([0.5, 1.0, 1.5])),
            top_k=draw(st.sampled_from([-1, -1, 0, 1, 5, 50])),
            top_p=draw(st.sampled_from([1.0, 1.0, 0.9, 0.5])),
            min_p=draw(st.sampled_from([0.0, 0.0, 0.05])),
            seed=draw(st.sampled_from([0, 1, 12345, 2**64 - 1])) if mode == "seeded" else None,
        )
    return SamplingParams(**kw)


@st.composite
def prompts(draw: st.DrawFn) -> list[int]:
    head = draw(st.sampled_from(PREFIXES))
    tail = draw(st.lists(st.integers(3, 60), min_size=0 if head else 1, max_size=24))
    return head + tail


@st.composite
def requests(draw: st.DrawFn) -> Req:
    kind = draw(st.sampled_from(["run", "run", "run", "abort", "stream", "bad"]))
    arrival = draw(st.integers(0, 12))
    prompt = draw(prompts())
    params = draw(good_params())
    if kind == "bad":
        if draw(st.integers(0, 5)) == 0:
            prompt, what = draw(st.sampled_from(BAD_PROMPTS))
            return Req("bad", arrival, prompt, params, bad_field=what)
        name, value = draw(st.sampled_from(BAD_PARAMS))
        params = replace(params)  # a copy: the strategy's object stays valid
        object.__setattr__(params, name, value)
        return Req("bad", arrival, prompt, params, bad_field=f"SamplingParams.{name}=")
    delay = draw(st.integers(0, 10)) if kind == "abort" else draw(st.integers(0, 4)) if kind == "stream" else 0
    return Req(kind, arrival, prompt, params, delay=delay)


workloads = st.lists(requests(), min_size=1, max_size=9)


# ---- engines and references ---------------------------------------------------------------
def _llm(**kw: Any) -> LLM:
    return LLM(model="tiny", max_model_len=MAX_LEN, threads=1, **kw)


@pytest.fixture(scope="module")
def refs() -> dict[str, LLM]:
    """Roomy references: the plain engine, and spec=ngram for seeded sampled requests."""
    return {"plain": _llm(kv_cache_tokens=2048), "ngram": _llm(kv_cache_tokens=2048, spec="ngram")}


@pytest.fixture(scope="module", params=list(CONFIGS))
def engine_under_test(request: pytest.FixtureRequest) -> tuple[str, LLM]:
    return request.param, _llm(**CONFIGS[request.param])


_solo_cache: dict[tuple[str, tuple[int, ...], str], RequestOutput] = {}


def solo(refs: dict[str, LLM], config: str, prompt: list[int], params: SamplingParams) -> RequestOutput:
    """The request run alone on a roomy reference engine (memoised across examples)."""
    which = "ngram" if "ngram" in config and not params.greedy else "plain"
    key = (which, tuple(prompt), repr(params))
    if key not in _solo_cache:
        _solo_cache[key] = refs[which].generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]
    return _solo_cache[key]


# ---- invariants -------------------------------------------------------------------------------
def tree_blocks(cache: Any) -> set[int]:
    return {n.block for n in cache._iter_nodes()} if hasattr(cache, "_iter_nodes") else set()


def check_refcounts(engine: Engine) -> None:
    """Every refcount equals the references that exist; the free list is exactly the blocks
    at zero; only radix-tree blocks are shared; only running sequences hold blocks, and only
    those of their computed tokens (slots reserved for drafts were given back)."""
    sched = engine.scheduler
    cache = sched.cache
    alloc = cache.allocator
    tree = tree_blocks(cache)
    expect = [0] * cache.num_blocks
    for b in tree:
        expect[b] += 1
    for table in cache._tables.values():
        for b in table:
            expect[b] += 1
    assert alloc.ref_counts == expect, "a reference count disagrees with the references held"
    assert sorted(alloc._free) == [b for b, c in enumerate(expect) if c == 0], "free list != blocks at zero"
    for b in range(cache.num_blocks):
        if b not in tree:
            assert sum(t.count(b) for t in cache._tables.values()) <= 1, "a non-tree block is shared"
    assert set(cache._tables) <= {s.seq_id for s in sched.running}, "a non-running sequence holds blocks"
    for s in sched.running:  # between steps a sequence holds the blocks of its computed tokens only
        assert s.num_computed_tokens < s.num_tokens
        want = -(-s.num_computed_tokens // cache.block_size)
        assert len(cache.block_table(s)) == want, "blocks beyond the computed tokens are still held"
    if hasattr(cache, "_paths"):
        users: dict[int, int] = {}
        for path in cache._paths.values():
            for node in path:
                users[id(node)] = users.get(id(node), 0) + 1
        nodes = list(cache._iter_nodes())
        assert all(n.users == users.get(id(n), 0) for n in nodes), "a radix node's user count is off"
        assert cache._evictable_count == sum(n.users == 0 for n in nodes)


def check_drained(engine: Engine) -> None:
    """Nothing queued, running or held by any sequence; no per-sequence state left."""
    sched = engine.scheduler
    cache = sched.cache
    assert not engine.has_unfinished() and not engine._requests
    assert not sched.waiting and not sched.running and not sched._enqueued
    assert not cache._tables
    check_refcounts(engine)
    tree = tree_blocks(cache)
    # every block free, or held by the radix tree alone (refcount exactly 1)
    assert all(c == (1 if b in tree else 0) for b, c in enumerate(cache.allocator.ref_counts))
    assert cache.allocator.num_free + len(tree) == cache.num_blocks
    if hasattr(cache, "_paths"):
        assert not cache._paths and not cache._frozen and not cache._counted
        assert all(n.users == 0 for n in cache._iter_nodes())
    for holder in (engine.proposer, engine.policy):
        for name in ("_index", "_seq", "_state"):
            leftover = getattr(holder, name, None)
            assert not leftover, f"{type(holder).__name__}.{name} keeps state of finished sequences: {leftover}"


def same_logprobs(got: Any, want: Any) -> bool:
    if (got is None) != (want is None):
        return False
    if got is None:
        return True
    return len(got) == len(want) and all(
        (g is None and w is None) or (
            g is not None and w is not None and set(g) == set(w)
            and all(abs(g[t].logprob - w[t].logprob) < 1e-3 for t in g)
        )
        for g, w in zip(got, want)
    )


def check_against_solo(r: Req, out: RequestOutput, ref: RequestOutput) -> None:
    """Equal to the solo run; for an aborted/dropped request, a prefix of it."""
    assert len(out.outputs) == len(ref.outputs) == r.params.n
    cut = r.kind == "abort" or (r.kind == "stream" and r.delay > 0)
    for o, w in zip(out.outputs, ref.outputs):
        if cut and o.finish_reason in ("abort", None):
            assert o.token_ids == w.token_ids[: len(o.token_ids)], f"{r.kind}: not a prefix of the solo run"
            continue
        assert o.token_ids == w.token_ids, f"{r.kind}: tokens differ from the solo run"
        assert (o.finish_reason, o.stop_reason) == (w.finish_reason, w.stop_reason)
        assert same_logprobs(o.logprobs, w.logprobs), "logprobs differ from the solo run"
    if r.params.prompt_logprobs is not None and not cut:
        assert same_logprobs(out.prompt_logprobs, ref.prompt_logprobs), "prompt logprobs differ"


# ---- the driver -------------------------------------------------------------------------------
def run_workload(llm: LLM, reqs: list[Req]) -> None:
    """Drive the engine tick by tick: admit arrivals, abort those due, advance the open
    stream (one at a time: a stream consumes the step outputs of its own request only) or
    step the engine. Every step's outputs are recorded and the refcounts checked."""
    engine = llm.engine
    last: dict[str, RequestOutput] = {}
    plain_step = engine.step

    def step() -> list[RequestOutput]:
        outs = plain_step()
        for o in outs:
            last[o.request_id] = o
        check_refcounts(engine)
        return outs

    engine.step = step  # type: ignore[method-assign]  # LLM.stream steps through it too
    stream: tuple[Req, Iterator[RequestOutput]] | None = None
    todo = sorted(reqs, key=lambda r: r.arrival)
    live: list[Req] = []
    tick = 0
    try:
        while todo or engine.has_unfinished() or stream is not None:
            assert tick < 3000, "the engine made no progress"
            while todo and todo[0].arrival <= tick:
                r = todo[0]
                if r.kind == "stream":
                    if stream is not None:
                        break  # one open stream at a time; later arrivals wait behind it
                    stream = (r, llm.stream({"prompt_token_ids": r.prompt}, r.params))
                elif r.kind == "bad":
                    admit_bad(engine, r)
                else:
                    r.rid = engine.add_request(None, r.prompt, r.params)
                    live.append(r)
                todo.pop(0)
            for r in [x for x in live if x.kind == "abort" and tick >= x.arrival + x.delay]:
                out = engine.abort(r.rid)  # type: ignore[arg-type]
                r.final = out if out is not None else last[r.rid]  # type: ignore[index]
                live.remove(r)
            if stream is not None:
                r, it = stream
                o = next(it, None)
                if o is not None:
                    r.rid = o.request_id
                    r.seen.append(o)
                if o is None or o.finished:
                    stream = None
                elif r.delay and len(r.seen) >= r.delay:
                    it.close()  # dropped midway: the request is aborted and freed
                    assert r.rid not in engine._requests
                    stream = None
            elif engine.has_unfinished():
                engine.step()
            tick += 1
    finally:
        del engine.step  # back to the class's method
    for r in live:
        r.final = last[r.rid]  # type: ignore[index]
    for r in reqs:
        if r.kind == "stream":
            r.final = r.seen[-1] if r.seen else None


def admit_bad(engine: Engine, r: Req) -> None:
    before = (len(engine.scheduler.waiting), len(engine.scheduler.running), set(engine._requests))
    with pytest.raises(ValueError) as err:
        engine.add_request(None, r.prompt, r.params)
    assert r.bad_field in str(err.value), f"the error does not name {r.bad_field!r}: {err.value}"
    assert before == (len(engine.scheduler.waiting), len(engine.scheduler.running), set(engine._requests))


FRESH = ([40, 41, 42, 43, 44], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))


@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(reqs=workloads)
def test_random_mix_isolation_and_cleanup(engine_under_test: tuple[str, LLM], refs: dict[str, LLM],
                                         reqs: list[Req]) -> None:
    config, llm = engine_under_test
    run_workload(llm, reqs)
    check_drained(llm.engine)
    for r in reqs:
        if r.kind == "bad":
            continue
        dropped = r.kind == "stream" and r.delay > 0
        assert r.final is not None and (r.final.finished or dropped), f"{r.kind} request never finished"
        if r.params.greedy or r.params.seed is not None:
            check_against_solo(r, r.final, solo(refs, config, r.prompt, r.params))
        else:  # unseeded sampling: only the shape of the result is fixed
            for o in r.final.outputs:
                assert o.finish_reason in ("stop", "length", "abort") or (dropped and o.finish_reason is None)
                assert len(o.token_ids) <= r.params.max_tokens
    fresh = llm.generate([{"prompt_token_ids": FRESH[0]}], FRESH[1], use_tqdm=False)[0]
    assert fresh.outputs[0].token_ids == solo(refs, "plain", *FRESH).outputs[0].token_ids
    check_drained(llm.engine)

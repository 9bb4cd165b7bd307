"""Continuous batching is lossless: a mixed batch equals each prompt alone on the torch
reference backend, and HF transformers; preemption and tiny chunk budgets change nothing."""

from __future__ import annotations

import random

import pytest

from infer import LLM, SamplingParams

N_PROMPTS = 32
N_NEW = 8


def mixed_prompts(tok, n: int, seed: int = 0) -> list[list[int]]:  # type: ignore[no-untyped-def]
    """n corpus slices of lengths 3..120 (a real text, so greedy continuations are varied)."""
    import pydoc_data.topics as t

    ids = tok.encode("\n".join(list(t.topics.values())[:40]), add_special_tokens=False)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(3, 120)
        start = rng.randrange(0, len(ids) - length)
        out.append(ids[start : start + length])
    return out


@pytest.fixture(scope="module")
def prompts(smollm2) -> list[list[int]]:  # type: ignore[no-untyped-def]
    return mixed_prompts(smollm2.get_tokenizer(), N_PROMPTS)


@pytest.fixture(scope="module")
def batched(smollm2, prompts) -> list[list[int]]:  # type: ignore[no-untyped-def]
    assert smollm2.config.attention.name == "paged"
    sp = SamplingParams(temperature=0, max_tokens=N_NEW, ignore_eos=True)
    outs = smollm2.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def test_batch_equals_reference_backend_alone(prompts, batched) -> None:  # type: ignore[no-untyped-def]
    ref = LLM(attention="torch", max_num_seqs=1)
    sp = SamplingParams(temperature=0, max_tokens=N_NEW, ignore_eos=True)
    for p, got in zip(prompts, batched):
        alone = ref.generate([{"prompt_token_ids": p}], sp, use_tqdm=False)[0].outputs[0].token_ids
        assert got == alone


def test_batch_equals_hf(prompts, batched, smollm2_hf, oracle) -> None:  # type: ignore[no-untyped-def]
    mismatches = [i for i, (p, got) in enumerate(zip(prompts, batched))
                  if got != oracle.hf_greedy(smollm2_hf, p, N_NEW)]
    assert not mismatches, f"prompts {mismatches} differ from HF"


@pytest.fixture(scope="module")
def tiny_case(tiny_checkpoint, smollm2):  # type: ignore[no-untyped-def]
    """A perturbed tiny Llama, 16 mixed prompts, and its plain batched greedy outputs."""
    folder = str(tiny_checkpoint("llama"))
    prompts = mixed_prompts(smollm2.get_tokenizer(), 16, seed=1)
    sp = SamplingParams(temperature=0, max_tokens=N_NEW, ignore_eos=True)
    plain = LLM(model=folder).generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    return folder, prompts, sp, [o.outputs[0].token_ids for o in plain]


def test_preemption_is_lossless(tiny_case) -> None:  # type: ignore[no-untyped-def]
    # 16 prompts x up to 128 tokens cannot all fit in 640 KV slots: the scheduler must
    # preempt (recompute) and still produce the same tokens
    folder, prompts, sp, plain = tiny_case
    tight = LLM(model=folder, kv_cache_tokens=640, max_model_len=640)
    outs = tight.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    assert tight.engine.scheduler.num_preemptions > 0
    assert [o.outputs[0].token_ids for o in outs] == plain


def test_tiny_prefill_chunks_are_lossless(tiny_case) -> None:  # type: ignore[no-untyped-def]
    # a 3-token step budget: prompts are prefilled 3 tokens at a time, mixed with decodes
    folder, prompts, sp, plain = tiny_case
    chunky = LLM(model=folder, max_num_batched_tokens=3)
    outs = chunky.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == plain

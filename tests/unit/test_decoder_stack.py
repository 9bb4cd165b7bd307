"""The C++ decoder stack (models/decoder_stack.py) against the eager per-module loop.

Oracle: the same engine with ``kernels.decoder_stack=off``. The stack calls the same kernels
in the same order with the same arguments, so greedy tokens AND their log-probabilities must
be identical (==, not close) on every step: prefill, continuous-batching decodes, prefix
extensions from the radix cache, layer-skip drafts. Each case also asserts that the stack was
built and ran, so a stack that silently never applies fails here instead of passing as the
oracle itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from infer import LLM, SamplingParams
from infer.layers.ops import resolve_ops
from infer.models import decoder_stack

pytestmark = pytest.mark.skipif(decoder_stack.load() is None, reason="C++ decoder stack did not build")

PROMPTS = [list(range(100, 140)), list(range(100, 120)) + [7, 8, 9], list(range(300, 303)), list(range(1000, 1090))]


def _run(llm: LLM, n: int = 12) -> list[tuple[list[int], list[float]]]:
    sp = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, logprobs=2)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], sp, use_tqdm=False)
    res = []
    for o in outs:
        c = o.outputs[0]
        res.append((list(c.token_ids), [lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs, strict=True)]))
    return res


def _pair(make: Callable[[str], LLM], n: int = 12) -> tuple[list, list, LLM]:  # type: ignore[type-arg]
    eager = make("off")
    assert not eager.engine.runner.model.ops.decoder_stack
    want = _run(eager, n)
    eager.shutdown()
    del eager
    fast = make("auto")
    got = _run(fast, n)
    return want, got, fast


def _stack_ran(llm: LLM, partial: bool = False) -> bool:
    """The stack was built and ran steps (``partial``: also over a subset of the layers)."""
    stack = llm.engine.runner.model.stack_slot.stack
    return stack is not None and stack.calls > 0 and (not partial or stack.partial_calls > 0)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("quant", ["none", "int8", "int4"])
def test_tiny_families_bit_identical(tiny_checkpoint: Callable[..., Path], family: str, quant: str) -> None:
    """Tied / untied heads, qkv bias (qwen2), q/k RMSNorm (qwen3); dense, int8 and int4 panel
    kernels (the latter two pack on their first forward: the stack takes over after it)."""
    folder = tiny_checkpoint(family)

    def make(mode: str) -> LLM:
        return LLM(model=str(folder), quant=quant, threads=2, max_num_seqs=3,
                   overrides=[f"kernels.decoder_stack={mode}"])

    want, got, fast = _pair(make)
    assert _stack_ran(fast), f"{family}/{quant}: the decoder stack was never built"
    assert got == want


def test_smollm2_radix_and_layer_skip_bit_identical() -> None:
    """The default model with the radix prefix cache (PROMPTS 0 and 1 share 20 tokens: the
    second extends a cached prefix) and self-speculation by layer skip (the stack runs a
    subset of the layers for the draft and all of them for verification rows)."""

    def make(mode: str) -> LLM:
        return LLM(attention="radix", spec="self", threads=2,
                   overrides=[f"kernels.decoder_stack={mode}", "spec.mode=layers",
                              "spec.skip_layers=[10,11,12,13,14,15,16,17,18,19]"])

    want, got, fast = _pair(make, 16)
    assert _stack_ran(fast, partial=True), "the layer-skip draft did not run on the stack"
    assert got == want


def test_not_applied_where_a_piece_is_not_cpp(tiny_checkpoint: Callable[..., Path]) -> None:
    """torch model ops: the stack is off; w8a8 (activations quantized in Python): never built,
    and the engine gives up asking after a few forwards."""
    assert not resolve_ops("torch", None, "cpu").decoder_stack
    assert resolve_ops("auto", None, "cpu").decoder_stack
    assert not resolve_ops("auto", None, "cpu", decoder_stack="off").decoder_stack
    llm = LLM(model=str(tiny_checkpoint("llama")), quant="w8a8", threads=1)
    _run(llm, 6)
    slot = llm.engine.runner.model.stack_slot
    assert slot.stack is None and slot.tries == decoder_stack._TRIES


def test_bad_choice_is_named() -> None:
    with pytest.raises(ValueError, match="decoder_stack='on'.*auto, off"):
        resolve_ops("auto", None, "cpu", decoder_stack="on")


def test_stack_matches_eager_forward_directly(tiny_checkpoint: Callable[..., Path]) -> None:
    """One model, both paths on the same step inputs: the hidden states are equal bit for bit
    (a mutation, e.g. dropping the q/k rotary in the stack, breaks this at the first step)."""
    llm = LLM(model=str(tiny_checkpoint("qwen3")), threads=1)
    _run(llm, 2)  # builds the stack
    model = llm.engine.runner.model
    stack = model.stack_slot.stack
    assert stack is not None
    # capture a real step's context, then run the layers both ways on fresh caches
    seen = {}
    orig = model.run_layer_list

    def spy(which, x, residual, positions, ctx):  # type: ignore[no-untyped-def]
        seen.setdefault("args", (list(which), x.clone(), positions.clone(), ctx))
        return orig(which, x, residual, positions, ctx)

    model.run_layer_list = spy
    _run(llm, 1)
    which, x, positions, ctx = seen["args"]
    caches0 = [tuple(t.clone() for t in kv) for kv in ctx.kv_caches]
    got = stack.run(which, x, None, positions, model.cos_sin, ctx)
    for kv, kv0 in zip(ctx.kv_caches, caches0, strict=True):
        for t, t0 in zip(kv, kv0, strict=True):
            t.copy_(t0)
    model.ops = type(model.ops)(**{**model.ops.__dict__, "decoder_stack": False})
    want = orig(which, x, None, positions, ctx)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("threads", [2, 3])
def test_team_decode_bit_identical(threads: int) -> None:
    """Few-row steps (decodes of 1-3 sequences) run the layers in one OpenMP team, the other
    threads prefetching their next projection part while thread 0 runs the small ops: on the
    default model (projections big enough that every thread takes a part), tokens and
    log-probabilities equal the eager loop's, and the team path really ran."""

    def make(mode: str) -> LLM:
        return LLM(threads=threads, max_num_seqs=3, overrides=[f"kernels.decoder_stack={mode}"])

    want, got, fast = _pair(make)
    stack = fast.engine.runner.model.stack_slot.stack
    assert stack is not None and stack.stack.team_steps() > 0, "the team path never ran"
    assert got == want

"""The Triton wiring end to end: greedy outputs of the tiny model with attention=triton and
kernels=triton are identical to the torch engine (attention=torch, kernels=torch), through
chunked prefill, mixed decode/prefill steps, split-K decode and recompute preemption; the
kernels group resolves per op and its overrides compose and take effect.

Without CUDA the kernels run under the Triton interpreter (see conftest.py): shapes and
token counts stay tiny so the file runs in well under two minutes on 2 cores.
"""

from __future__ import annotations

import pytest
import torch

from infer import LLM, SamplingParams
from infer.attention.base import SeqSlice
from infer.attention.torch_ref import TorchRefBackend
from infer.attention.triton_backend import TritonBackend
from infer.layers import ops as ops_mod
from infer.layers.ops import OP_NAMES, resolve_ops

# mixed lengths: a short prompt, one over a block, one that needs three prefill chunks
PROMPTS = [[5, 17, 230], list(range(100, 121)), list(range(3000, 3040))]
MAX_TOKENS = [7, 5, 6]


def _run(llm: LLM) -> tuple[list[list[int]], list[list[float]]]:
    sps = [
        SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, logprobs=0) for n in MAX_TOKENS
    ]
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], sps, use_tqdm=False)
    ids = [o.outputs[0].token_ids for o in outs]
    lps = [[lp[t].logprob for t, lp in zip(i, o.outputs[0].logprobs)] for i, o in zip(ids, outs)]
    return ids, lps


@pytest.fixture(scope="module")
def torch_reference() -> tuple[list[list[int]], list[list[float]]]:
    """The oracle: torch attention, torch ops, a roomy KV cache, whole-prompt prefills."""
    llm = LLM(
        model="tiny", attention="torch", kernels="torch", max_model_len=64, kv_cache_tokens=4096
    )
    return _run(llm)


def test_triton_engine_matches_torch_engine(torch_reference) -> None:  # type: ignore[no-untyped-def]
    # 4 KV blocks of 16 for 3 sequences needing 6: recompute preemption; a 16-token budget
    # chunks the 21- and 40-token prompts and mixes decodes with prefill chunks in a step
    llm = LLM(
        model="tiny",
        attention="triton",
        kernels="triton",
        max_model_len=64,
        kv_cache_tokens=64,
        max_num_batched_tokens=16,
        overrides=["attention.backend.num_splits=2"],
    )  # split-K decode on short contexts
    model_ops = llm.engine.runner.model.ops
    assert all(model_ops.impls[op] == "triton" for op in OP_NAMES)
    assert isinstance(llm.engine.runner.backend, TritonBackend)
    ids, lps = _run(llm)
    want_ids, want_lps = torch_reference
    assert ids == want_ids
    assert llm.engine.scheduler.num_preemptions > 0, "the KV budget was meant to preempt"
    for got, want in zip(lps, want_lps):
        assert got == pytest.approx(want, abs=1e-4)


def test_triton_verify_rows_match_torch_engine(torch_reference) -> None:  # type: ignore[no-untyped-def]
    # spec=draft with the target's own checkpoint drafts exactly the target's tokens, so every
    # step after the prompt feeds 1 + k verify rows per sequence through the Triton kernels
    llm = LLM(
        model="tiny", attention="triton", kernels="triton", max_model_len=64, kv_cache_tokens=4096,
        spec="draft", overrides=["spec.num_tokens=3", "spec.policy.kind=fixed"],
    )
    ids, lps = _run(llm)
    assert llm.engine.stats.spec_accepted > 0 and llm.engine.stats.acceptance_rate == 1.0
    want_ids, want_lps = torch_reference
    assert ids == want_ids
    for got, want in zip(lps, want_lps):
        assert got == pytest.approx(want, abs=1e-4)


def test_rms_norm_override_composes_and_takes_effect(torch_reference, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import infer_kernels.rms_norm as k

    calls = {"rms_norm": 0, "fused_add_rms_norm": 0}

    def spy(name):  # type: ignore[no-untyped-def]
        real = getattr(k, name)

        def f(*a, **kw):  # type: ignore[no-untyped-def]
            calls[name] += 1
            return real(*a, **kw)

        return f

    for name in calls:
        monkeypatch.setattr(k, name, spy(name))
    llm = LLM(
        model="tiny",
        attention="torch",
        kernels="torch",
        max_model_len=64,
        kv_cache_tokens=4096,
        overrides=["kernels.overrides.rms_norm=triton"],
    )
    model_ops = llm.engine.runner.model.ops
    assert {op: i for op, i in model_ops.impls.items() if i == "triton"} == {"rms_norm": "triton"}
    assert model_ops.fused_add_rms_norm is ops_mod._fused_add_rms_norm_torch
    assert model_ops.rotary is ops_mod._rotary_torch
    assert model_ops.silu_and_mul is ops_mod._silu_and_mul_torch
    # every RMSNorm module of the model holds the same resolved ops (passed, not global)
    assert llm.engine.runner.model.layers[0].input_layernorm.ops is model_ops
    ids, _ = _run(llm)
    assert ids == torch_reference[0]
    assert calls["rms_norm"] > 0 and calls["fused_add_rms_norm"] == 0


def test_auto_and_torch_resolution() -> None:
    # auto on CPU: the C++ model ops when they build (tests/unit/test_cpu_model_ops.py), torch
    # for the rest
    cpu_auto = resolve_ops("auto", None, "cpu").impls
    assert {cpu_auto[op] for op in ops_mod.QUANT_OPS} == {"torch"}
    assert {cpu_auto[op] for op in ops_mod.MODEL_OPS} <= {"cpp", "torch"}
    assert set(resolve_ops("auto", None, "cuda").impls.values()) == {"triton"}
    mixed = resolve_ops("triton", {"rotary": "torch", "silu_and_mul": None}, "cpu")
    assert mixed.impls["rotary"] == "torch" and mixed.impls["silu_and_mul"] == "triton"
    assert mixed.rope_factors is ops_mod.rope_cos_sin  # rope factors follow the rotary impl


@pytest.mark.parametrize(
    ("impl", "overrides", "needles"),
    [
        ("torch", {"rms_nrom": "triton"}, ["rms_nrom", *OP_NAMES]),
        ("torch", {"rms_norm": "cuda"}, ["cuda", "rms_norm", "auto", "torch", "triton"]),
        ("cuda", None, ["kernels.impl", "cuda", "auto", "torch", "triton"]),
    ],
)
def test_bad_op_or_impl_lists_valid_ones(impl, overrides, needles) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError) as ei:
        resolve_ops(impl, overrides, "cpu")
    for n in needles:
        assert n in str(ei.value)


def test_bad_override_through_config_fails_clearly() -> None:
    with pytest.raises(ValueError) as ei:
        LLM(
            model="tiny",
            kernels="torch",
            overrides=["+kernels.overrides.rope=triton"],
            max_model_len=64,
            kv_cache_tokens=256,
        )
    for op in OP_NAMES:
        assert op in str(ei.value)


def test_bf16_under_interpreter_is_refused() -> None:
    if torch.cuda.is_available():
        pytest.skip("bf16 Triton runs on a GPU")
    with pytest.raises(ValueError, match="bfloat16"):
        resolve_ops("torch", {"silu_and_mul": "triton"}, "cpu", torch.bfloat16)
    resolve_ops("torch", None, "cpu", torch.bfloat16)  # torch ops are fine in bf16


@pytest.mark.parametrize("num_splits", [None, 3])
def test_triton_backend_matches_reference_on_a_mixed_step(num_splits) -> None:  # type: ignore[no-untyped-def]
    """One step, two layers' worth of calls: decodes (contexts 1, 17, 40), an extend chunk
    over a cached prefix and a fresh prefill, GQA 4/2, block 16, fp32."""
    g = torch.Generator().manual_seed(0)
    hq, hk, d, bs, nblocks = 4, 2, 32, 16, 24
    cached = {0: 0, 1: 16, 2: 39, 3: 20, 4: 0}
    new = {0: 1, 1: 1, 2: 1, 3: 13, 4: 9}
    perm = torch.randperm(nblocks, generator=g).tolist()
    seqs, nxt = [], 0
    for i in range(5):
        n = -(-(cached[i] + new[i]) // bs)
        seqs.append(SeqSlice(cached[i], new[i], perm[nxt : nxt + n]))
        nxt += n
    t = sum(new.values())
    kv_shape = (nblocks, bs, hk, d)
    caches = {}
    for name, be in (("ref", TorchRefBackend()), ("triton", TritonBackend(num_splits))):
        kc = torch.randn(kv_shape, generator=torch.Generator().manual_seed(1))
        vc = torch.randn(kv_shape, generator=torch.Generator().manual_seed(2))
        caches[name] = (be, be.plan(seqs, bs, torch.device("cpu")), (kc, vc))
    assert caches["triton"][1].num_decodes == 3
    for _layer in range(2):
        q = torch.randn(t, hq, d, generator=g)
        k = torch.randn(t, hk, d, generator=g)
        v = torch.randn(t, hk, d, generator=g)
        outs = {n: be.forward(q, k, v, kv, md, d**-0.5) for n, (be, md, kv) in caches.items()}
        torch.testing.assert_close(outs["triton"], outs["ref"], atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(caches["triton"][2][0], caches["ref"][2][0], atol=0, rtol=0)
        torch.testing.assert_close(caches["triton"][2][1], caches["ref"][2][1], atol=0, rtol=0)

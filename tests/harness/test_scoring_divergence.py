"""Scoring through the engine matches the HF oracle; KL/top-1/greedy statistics are right;
the reference is computed once and then read from the cache."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from omegaconf import open_dict

from infer.eval import evaluate as evaluate_mod
from infer.eval.divergence import DivergenceAccumulator, token_kl
from infer.eval.greedy import agreement
from infer.eval.perplexity import perplexity, token_nll
from infer.eval.reference import ReferenceStore, derive_config, same_engine
from infer.eval.scoring import score_tokens

IDS = [int(t) for t in torch.randint(10, 40000, (40,), generator=torch.Generator().manual_seed(0))]


def test_scoring_matches_hf(tiny_engine: Any) -> None:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(tiny_engine.model_path), dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = hf(torch.tensor([IDS])).logits[0].float()
    got = score_tokens(tiny_engine, IDS)
    assert got.shape == ref.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-4)
    # chunked prefill through the same cache gives the same logits
    torch.testing.assert_close(score_tokens(tiny_engine, IDS, chunk=7), got, atol=2e-4, rtol=1e-4)
    # the window's KV blocks were given back
    assert tiny_engine.scheduler.cache.usage() == 0.0


def test_score_rejects_too_long_window(tiny_engine: Any) -> None:
    with pytest.raises(ValueError, match="max_model_len"):
        score_tokens(tiny_engine, [1] * (tiny_engine.max_model_len + 1))


def test_kl_full_and_topk(tmp_path) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(1)
    p_logits = torch.randn(9, 50, generator=g) * 3
    q_logits = p_logits + 0.3 * torch.randn(9, 50, generator=g)
    ids = list(range(9))
    exact = (torch.softmax(p_logits[:-1], -1) * (torch.log_softmax(p_logits[:-1], -1)
             - torch.log_softmax(q_logits[:-1], -1))).sum(-1)
    full = ReferenceStore(tmp_path / "full", None).put(ids, p_logits)
    torch.testing.assert_close(token_kl(q_logits, full), exact, atol=2e-3, rtol=2e-2)
    assert float(token_kl(p_logits, full).max()) < 1e-5  # itself: zero up to fp16 storage
    top = ReferenceStore(tmp_path / "top", 8).put(ids, p_logits)
    kl_top = token_kl(q_logits, top)
    assert bool((kl_top <= exact + 1e-5).all())  # lumping the tail is a lower bound
    assert float(kl_top.mean()) > 0.5 * float(exact.mean())
    acc = DivergenceAccumulator()
    acc.add(q_logits, token_nll(q_logits, ids), full)
    s = acc.summary()
    assert s["kl_mean"] == pytest.approx(float(exact.mean()), rel=2e-2)
    assert s["ppl_ref"] == pytest.approx(perplexity(token_nll(p_logits, ids)), rel=1e-5)
    assert 0.0 <= s["top1_agree"] <= 1.0 and s["kl_p99"] <= s["kl_max"]


def test_greedy_agreement() -> None:
    a = agreement([[1, 2, 3], [1, 2, 4], [9, 9, 9]], [[1, 2, 3], [1, 2, 3], [1, 2, 3]])
    assert a["greedy_match"] == pytest.approx(1 / 3)
    assert a["greedy_prefix"] == pytest.approx((3 + 2 + 0) / 3)
    assert a["greedy_prefix_frac"] == pytest.approx(5 / 9)


def test_derive_reference_config(tiny_cfg: Any) -> None:
    ref = derive_config(tiny_cfg, ["attention=torch", "model.dtype=float32"])
    assert ref.attention.name == "torch" and ref.model.dtype == "float32"
    assert tiny_cfg.attention.name == tiny_cfg.attention.name  # original untouched
    assert same_engine(ref, derive_config(ref, ["attention=torch"]))
    with pytest.raises(ValueError, match="allowed"):
        derive_config(tiny_cfg, ["attention=nope"])


def test_reference_cached_once(tiny_cfg: Any, tiny_engine: Any, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cfg = copy.deepcopy(tiny_cfg)
    with open_dict(cfg):
        cfg.eval.window, cfg.eval.max_windows = 32, 2
        cfg.eval.greedy_prompts, cfg.eval.greedy_prompt_len, cfg.eval.greedy_max_tokens = 2, 8, 4
        cfg.eval.reference = ["attention=torch", "model.dtype=float32", "engine.seed=12345"]
    first = evaluate_mod.evaluate(tiny_engine, cfg)
    assert first["eval_tokens"] == 2 * 31 and first["greedy_prefix"] <= 4

    def no_build(*a: Any, **k: Any) -> Any:
        raise AssertionError("reference rebuilt although it is cached")

    monkeypatch.setattr(evaluate_mod, "build_reference", no_build)
    second = evaluate_mod.evaluate(tiny_engine, cfg)
    for k in ("ppl", "kl_mean", "top1_agree", "greedy_match"):
        assert second[k] == pytest.approx(first[k], rel=1e-6, abs=1e-9)
    # same model and maths in fp32 (attention backends differ only in summation order)
    assert first["kl_mean"] < 1e-4 and first["top1_agree"] > 0.95

"""Sampling with speculation is distribution-exact, per proposer, on a 12-token-vocabulary
model: sampled continuations (the first token is sampled at prefill, the next three go
through draft verification: accepted drafts, residual draws after a rejection, bonus tokens)
fit the exact distribution plain sampling draws from (HF logits through the engine's own
processors), at temperature 1, with top-p (+ presence penalty) and with top-k (+ repetition
penalty). spec=none is held to the same test (it validates the oracle), and a verifier with
the classic bug (a rejected position drawn from p instead of norm(max(0, p - q))) fails it:
the test has power at this sample size."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from spec_engine_utils import (  # type: ignore[import-not-found]
    exact_conditionals,
    generate,
    make_tiny_vocab_checkpoint,
    sequential_chi2,
)

from infer import LLM, SamplingParams

LENGTH = 4  # tokens per continuation
N = 600  # samples per setting (the engine seeds each request from its own seed)
SETTINGS = {
    "temperature": SamplingParams(temperature=1.0, max_tokens=LENGTH, ignore_eos=True),
    "top_p": SamplingParams(temperature=1.0, top_p=0.8, presence_penalty=0.5, max_tokens=LENGTH, ignore_eos=True),
    "top_k": SamplingParams(temperature=0.9, top_k=3, repetition_penalty=1.3, max_tokens=LENGTH, ignore_eos=True),
}
P_MIN = 1e-4  # per (proposer, setting); seeds are fixed, so the outcome is deterministic
ENGINE = {"skip_tokenizer_init": True, "max_num_seqs": 256, "threads": 1}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("tiny-vocab")
    return (make_tiny_vocab_checkpoint(root / "target", seed=0),
            make_tiny_vocab_checkpoint(root / "draft", seed=1, layers=1))


@pytest.fixture(scope="module")
def prompt(models) -> list[int]:  # type: ignore[no-untyped-def]
    """[1, 2, 3] and the target's own greedy continuation of it: a random model falls into a
    loop, so prompt lookup finds matches and proposes tokens the target likes (drafts are
    often accepted, and a wrong rejection path shows up clearly)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(models[0]), dtype=torch.float32).eval()
    ids = [1, 2, 3]
    with torch.inference_mode():
        for _ in range(21):
            ids.append(int(hf(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids


@pytest.fixture(scope="module")
def exact(models, prompt) -> dict[str, dict]:  # type: ignore[no-untyped-def,type-arg]
    return {name: exact_conditionals(models[0], prompt, sp, LENGTH) for name, sp in SETTINGS.items()}


def sample(llm: LLM, prompt: list[int]) -> dict[str, list[tuple[int, ...]]]:
    params = [sp for sp in SETTINGS.values() for _ in range(N)]
    outs = generate(llm, [prompt] * len(params), params)
    toks = [tuple(o.outputs[0].token_ids) for o in outs]
    assert all(len(t) == LENGTH for t in toks)
    return {name: toks[i * N : (i + 1) * N] for i, name in enumerate(SETTINGS)}


def fit(samples: dict[str, list[tuple[int, ...]]], exact: dict[str, dict]) -> dict[str, float]:  # type: ignore[type-arg]
    return {name: sequential_chi2(samples[name], exact[name])[2] for name in SETTINGS}


PROPOSERS = {
    "none": ("none", []),
    "ngram": ("ngram", []),
    "suffix": ("suffix", []),
    "draft": ("draft", ["spec.model={draft}"]),  # a different random model: a probabilistic q
    "self-layers": ("self", ["spec.mode=layers", "spec.skip_layers=[1]"]),
    "self-quant": ("self", ["spec.mode=quant", "spec.draft_quant=int8"]),
}


@pytest.mark.parametrize("proposer", list(PROPOSERS))
def test_sampled_continuations_fit_the_target(models, prompt, exact, proposer: str) -> None:  # type: ignore[no-untyped-def]
    spec, ov = PROPOSERS[proposer]
    ov = [o.format(draft=models[1]) for o in ov]
    if spec != "none":
        ov += ["spec.policy.kind=fixed", "spec.num_tokens=3"]
    llm = LLM(model=str(models[0]), spec=spec, overrides=ov, seed=11, **ENGINE)
    pvals = fit(sample(llm, prompt), exact)
    st = llm.engine.stats
    if spec != "none":
        # drafts were verified, and the rejection path ran too
        assert st.spec_drafted > st.spec_accepted > 0, (st.spec_drafted, st.spec_accepted)
    bad = {k: v for k, v in pvals.items() if v < P_MIN}
    assert not bad, f"spec={proposer}: sampled distribution differs from the target's (p-values {pvals})"
    del llm
    gc.collect()


def _biased_core(real):  # type: ignore[no-untyped-def]
    """rejection_core with the classic bug: the token after the accepted drafts is always drawn
    from p (right for a bonus token, wrong after a rejection)."""

    def core(target_probs, draft, num_draft, draft_probs, uniform, noise):  # type: ignore[no-untyped-def]
        tokens, n = real(target_probs, draft, num_draft, draft_probs, uniform, noise)
        rows = torch.arange(draft.shape[0], device=draft.device)
        tokens[rows, n] = (target_probs[rows, n] / noise).argmax(-1)
        return tokens, n

    return core


@pytest.mark.parametrize("proposer", ["ngram", "draft"])
def test_the_fit_catches_a_biased_verifier(models, prompt, exact, monkeypatch, proposer: str) -> None:  # type: ignore[no-untyped-def]
    from infer.spec import verify

    monkeypatch.setattr(verify, "rejection_core", _biased_core(verify.rejection_core))
    spec, ov = PROPOSERS[proposer]
    ov = [o.format(draft=models[1]) for o in ov] + ["spec.policy.kind=fixed", "spec.num_tokens=3"]
    llm = LLM(model=str(models[0]), spec=spec, overrides=ov, seed=11, **ENGINE)
    pvals = fit(sample(llm, prompt), exact)
    assert min(pvals.values()) < P_MIN, f"the biased verifier passed the check: {pvals}"

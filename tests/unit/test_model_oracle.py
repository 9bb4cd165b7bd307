"""Model math vs HF transformers on tiny random checkpoints of every supported family.

Each checkpoint is written by transformers into a temp folder, its norm weights and biases
perturbed (init leaves them at exactly 1 / 0), then loaded by ``LLM(model=<folder>)``.
Checked: prefill logits (fp32, max abs diff <= 1e-3) and 32 greedy tokens, token for token.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from infer import LLM, SamplingParams
from infer.models.tiny import TINY_FAMILIES

ATOL = 1e-3
N_NEW = 32
# llama3 preset: original_max_position_embeddings=256; the long prompt crosses it
LONG = 300


def _prompt(n: int, seed: int, vocab: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=g).tolist()


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def family_pair(request, tiny_checkpoint, oracle):  # type: ignore[no-untyped-def]
    """(family, our LLM, HF model) on the same perturbed tiny folder; pytest groups the
    tests by family so each pair is built once."""
    folder = tiny_checkpoint(request.param)
    llm = LLM(model=str(folder), kv_cache_tokens=8192)
    yield request.param, llm, oracle.hf_load(folder)
    del llm


def test_prefill_logits_match_hf(family_pair, oracle):  # type: ignore[no-untyped-def]
    family, llm, hf = family_pair
    ids = _prompt(LONG, seed=1, vocab=llm.engine.vocab_size)
    ours = oracle.engine_logits(llm, ids)
    ref = oracle.hf_logits(hf, ids)
    assert ours.shape == ref.shape == (LONG, llm.engine.vocab_size)
    assert ref.abs().max() > 0.05, "degenerate oracle logits"
    diff = (ours - ref).abs().max().item()
    assert diff <= ATOL, f"{family}: max |logit diff| {diff:.2e} > {ATOL}"


def test_greedy_generation_matches_hf(family_pair, oracle):  # type: ignore[no-untyped-def]
    family, llm, hf = family_pair
    vocab = llm.engine.vocab_size
    # two requests batched together; the long one decodes across position 256
    prompts = [
        llm.get_tokenizer().encode("The quick brown fox", add_special_tokens=False),
        _prompt(250, seed=2, vocab=vocab),
    ]
    sp = SamplingParams(temperature=0, max_tokens=N_NEW, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    for p, out in zip(prompts, outs):
        ref = oracle.hf_greedy(hf, p, N_NEW)
        assert out.outputs[0].token_ids == ref, f"{family}: greedy tokens differ from HF"
        assert out.outputs[0].finish_reason == "length"


def test_qwen2_checkpoint_has_real_qkv_bias_and_tied_embeddings(tiny_checkpoint):  # type: ignore[no-untyped-def]
    """The qwen2 oracle only proves bias handling if the saved biases are nonzero."""
    folder = tiny_checkpoint("qwen2")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["tie_word_embeddings"] is True
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        names = list(f.keys())
        biases = [n for n in names if n.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias"))]
        assert len(biases) == 3 * cfg["num_hidden_layers"]
        assert all(f.get_tensor(n).abs().min() > 0 for n in biases)
    assert "lm_head.weight" not in names  # tied: the LM head is the embedding


def test_qwen3_checkpoint_has_nontrivial_qk_norm(tiny_checkpoint):  # type: ignore[no-untyped-def]
    folder = tiny_checkpoint("qwen3")
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        norms = [n for n in f.keys() if n.endswith(("q_norm.weight", "k_norm.weight"))]
        assert norms and all((f.get_tensor(n) - 1).abs().max() > 0.01 for n in norms)


def test_llama3_rope_scaling_matters_beyond_original_context(tiny_checkpoint, oracle):  # type: ignore[no-untyped-def]
    """Sensitivity check: the same weights with the llama3 scaling dropped give logits far
    from the oracle's, so the match above really tests the scaling."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = tiny_checkpoint("llama3")
    cfg = AutoConfig.from_pretrained(str(folder))
    rope = getattr(cfg, "rope_parameters", None) or cfg.rope_scaling
    assert rope["rope_type"] == "llama3" and rope["original_max_position_embeddings"] == 256
    assert LONG > rope["original_max_position_embeddings"]
    ids = _prompt(LONG, seed=1, vocab=cfg.vocab_size)
    scaled = oracle.hf_logits(oracle.hf_load(folder), ids)[256:]
    plain = dict(rope_type="default", rope_theta=rope["rope_theta"])
    if hasattr(cfg, "rope_parameters"):
        cfg.rope_parameters = plain
    else:
        cfg.rope_scaling = None
    unscaled = AutoModelForCausalLM.from_pretrained(str(folder), config=cfg, dtype=torch.float32).eval()
    far = oracle.hf_logits(unscaled, ids)[256:]
    assert (scaled - far).abs().max().item() > 100 * ATOL

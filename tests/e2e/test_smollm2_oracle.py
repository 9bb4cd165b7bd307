"""The default model (SmolLM2-135M-Instruct, fp32) vs HF transformers on the same folder."""

from __future__ import annotations

from infer import SamplingParams

ATOL = 1e-3
N_NEW = 32
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
]


def test_prefill_logits_match_hf(smollm2, smollm2_hf, oracle):  # type: ignore[no-untyped-def]
    tok = smollm2.get_tokenizer()
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Give three tips for writing clear Python code."}],
        add_generation_prompt=True, tokenize=True,
    )
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert len(ids) > 20
    ours = oracle.engine_logits(smollm2, ids)
    ref = oracle.hf_logits(smollm2_hf, ids)
    assert ours.shape == ref.shape == (len(ids), 49152)
    diff = (ours - ref).abs().max().item()
    assert diff <= ATOL, f"max |logit diff| {diff:.2e} > {ATOL}"


def test_greedy_32_tokens_match_hf(smollm2, smollm2_hf, oracle):  # type: ignore[no-untyped-def]
    sp = SamplingParams(temperature=0, max_tokens=N_NEW, ignore_eos=True)
    outs = smollm2.generate(PROMPTS, sp, use_tqdm=False)  # one continuous batch
    for prompt, out in zip(PROMPTS, outs):
        ref = oracle.hf_greedy(smollm2_hf, out.prompt_token_ids, N_NEW)
        assert out.outputs[0].token_ids == ref, f"greedy tokens differ from HF for {prompt!r}"
        assert len(out.outputs[0].token_ids) == N_NEW


def test_capital_of_france_is_paris(smollm2):  # type: ignore[no-untyped-def]
    """A real fact about the embedded model: a working model, not random weights."""
    out = smollm2.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=4))
    assert out[0].outputs[0].text.startswith(" Paris")

"""The notebook API's shape (vLLM-like), on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def llm():  # type: ignore[no-untyped-def]
    from infer import LLM

    return LLM(model="tiny", kv_cache_tokens=8192)


def test_public_names() -> None:
    import infer
    from infer import LLM, SamplingParams  # noqa: F401

    for name in ("LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "build"):
        assert hasattr(infer, name)


def test_prompt_forms_and_output_fields(llm) -> None:  # type: ignore[no-untyped-def]
    from infer import CompletionOutput, RequestOutput, SamplingParams

    tok = llm.get_tokenizer()
    text = "The capital of France is"
    ids = tok.encode(text, add_special_tokens=False)
    sp = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    outs = llm.generate([text, {"prompt_token_ids": ids}, {"prompt": text}], sp, use_tqdm=False)
    assert len(outs) == 3
    for o in outs:
        assert isinstance(o, RequestOutput) and o.finished
        assert o.prompt_token_ids == ids
        c = o.outputs[0]
        assert isinstance(c, CompletionOutput)
        assert len(c.token_ids) == 5 and c.finish_reason == "length"
        assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)
    assert outs[0].prompt == text and outs[2].prompt == text
    # a string and its token ids are the same request
    assert outs[0].outputs[0].token_ids == outs[1].outputs[0].token_ids == outs[2].outputs[0].token_ids


def test_single_prompt_and_per_prompt_params(llm) -> None:  # type: ignore[no-untyped-def]
    from infer import SamplingParams

    one = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    assert isinstance(one, list) and len(one) == 1 and len(one[0].outputs[0].token_ids) == 3
    # outputs come back in input order, each with its own params
    outs = llm.generate(
        ["a", "b", "c"],
        [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (1, 4, 2)],
        use_tqdm=False,
    )
    assert [len(o.outputs[0].token_ids) for o in outs] == [1, 4, 2]
    assert [o.prompt for o in outs] == ["a", "b", "c"]


def test_batch_equals_single(llm) -> None:  # type: ignore[no-untyped-def]
    """Greedy output of a request does not depend on what shares its batch."""
    from infer import SamplingParams

    sp = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    prompts = ["One", "Two three four", "Five six"]
    batched = [o.outputs[0].token_ids for o in llm.generate(prompts, sp, use_tqdm=False)]
    single = [llm.generate(p, sp)[0].outputs[0].token_ids for p in prompts]
    assert batched == single


def test_stop_token_ends_request(llm) -> None:  # type: ignore[no-untyped-def]
    from infer import SamplingParams

    sp = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    toks = llm.generate("Hello", sp)[0].outputs[0].token_ids
    # declare a token the greedy stream emits (for the first time) at index i a stop token
    i = max(j for j in range(len(toks)) if toks[j] not in toks[:j])
    sp2 = SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[toks[i]], ignore_eos=True)
    out = llm.generate("Hello", sp2)[0].outputs[0]
    assert out.token_ids == toks[: i + 1]
    assert out.finish_reason == "stop" and out.stop_reason == toks[i]


def test_tokenizer_and_model_path(llm) -> None:  # type: ignore[no-untyped-def]
    tok = llm.get_tokenizer()
    assert tok.decode(tok.encode("hello world", add_special_tokens=False)) == "hello world"
    assert isinstance(llm.model_path, Path)
    assert (llm.model_path / "config.json").is_file()
    assert any(llm.model_path.glob("*.safetensors"))

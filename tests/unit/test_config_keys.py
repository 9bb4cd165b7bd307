"""Engine keys: zero or negative values are errors naming the key (only null means unset);
the tokenizer comes from ``model.tokenizer`` when the checkpoint has none, and
``skip_tokenizer_init=true`` builds an engine without one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from infer import LLM, SamplingParams
from infer.models.sources import resolve_model_path


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"kv_cache_tokens": 0}, "engine.kv_cache_tokens"),
        ({"kv_cache_tokens": -16}, "engine.kv_cache_tokens"),
        ({"max_model_len": 0}, "engine.max_model_len"),
        ({"threads": 0}, "threads"),
        ({"threads": -1}, "threads"),
        ({"max_num_seqs": 0}, "engine.max_num_seqs"),
        ({"max_num_batched_tokens": 0}, "engine.max_num_batched_tokens"),
        ({"kv_cache_memory_gb": 0}, "engine.kv_cache_memory_gb"),
        ({"seed": -1}, "engine.seed"),
        ({"chunked_prefill": 1}, "engine.chunked_prefill"),
        ({"overrides": ["attention.block_size=0"]}, "attention.block_size"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()),
)
def test_zero_or_negative_keys_are_rejected(kwargs, key) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=key.replace(".", r"\.")) as ei:
        LLM(model="tiny", **kwargs)
    assert "allowed" in str(ei.value)


def test_null_still_means_unset() -> None:
    import json

    limit = json.loads((resolve_model_path("builtin:tiny-llama") / "config.json").read_text())[
        "max_position_embeddings"
    ]
    llm = LLM(model="tiny", kv_cache_tokens=None, max_model_len=None, threads=None,
              kv_cache_memory_gb=0.01)
    assert llm.engine.max_model_len == limit  # the model's own limit
    kv = llm.engine.runner.kv
    assert kv.num_tokens == int(0.01 * 2**30) // kv.bytes_per_token // kv.block_size * kv.block_size


@pytest.fixture(scope="module")
def no_tokenizer(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """A valid tiny checkpoint folder with its tokenizer files left out."""
    src = resolve_model_path("builtin:tiny-llama")
    dst = tmp_path_factory.mktemp("no-tokenizer")
    for f in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(src / f, dst / f)
    return dst


def test_missing_tokenizer_names_the_keys(no_tokenizer: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.tokenizer") as ei:
        LLM(model=str(no_tokenizer), kv_cache_tokens=4096)
    assert "skip_tokenizer_init" in str(ei.value) and str(no_tokenizer) in str(ei.value)


def test_bad_tokenizer_path_names_the_key(no_tokenizer: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.tokenizer"):
        LLM(model=str(no_tokenizer), kv_cache_tokens=4096, overrides=[f"model.tokenizer={tmp_path}"])


def test_tokenizer_from_another_folder(no_tokenizer: Path) -> None:
    tok_dir = resolve_model_path("builtin:tiny-llama")
    llm = LLM(model=str(no_tokenizer), kv_cache_tokens=4096, overrides=[f"model.tokenizer={tok_dir}"])
    ref = LLM(model="tiny", kv_cache_tokens=4096)
    sp = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    got = llm.generate("Hello there", sp, use_tqdm=False)[0].outputs[0]
    want = ref.generate("Hello there", sp, use_tqdm=False)[0].outputs[0]
    assert got.token_ids == want.token_ids and got.text == want.text and got.text


def test_skip_tokenizer_init_builds_without_one(no_tokenizer: Path) -> None:
    llm = LLM(model=str(no_tokenizer), kv_cache_tokens=4096, overrides=["skip_tokenizer_init=true"])
    assert llm.engine.tokenizer is None
    ref = LLM(model="tiny", kv_cache_tokens=4096)
    sp = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    ids = [{"prompt_token_ids": [9906, 1010, 2683]}]
    out = llm.generate(ids, sp, use_tqdm=False)[0].outputs[0]
    assert out.token_ids == ref.generate(ids, sp, use_tqdm=False)[0].outputs[0].token_ids
    assert out.text == ""


def test_calibration_uses_the_configured_tokenizer(no_tokenizer: Path, tmp_path: Path) -> None:
    # w8a8 calibrates on text: its tokenizer is model.tokenizer, not the (empty) model folder
    tok_dir = resolve_model_path("builtin:tiny-llama")
    calib = ["quant.method.calib.num_seqs=2", "quant.method.calib.seq_len=32",
             f"quant.method.cache_dir={tmp_path}"]
    llm = LLM(model=str(no_tokenizer), quant="w8a8", kv_cache_tokens=4096,
              overrides=[f"model.tokenizer={tok_dir}", *calib])
    out = llm.generate("Hello there", SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 3

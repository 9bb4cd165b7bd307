"""Bad input: each case is a clear error naming the problem, and the engine keeps serving.

Requests go to one LLM (tiny model, max_model_len=64); after every bad request a good one
must still produce exactly the reference output. Bad checkpoints are made from a copy of a
tiny checkpoint written by transformers.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from infer import LLM, SamplingParams

MAX_LEN = 64
GOOD = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(model="tiny", max_model_len=MAX_LEN)


@pytest.fixture(scope="module")
def reference(llm: LLM) -> list[int]:
    out = llm.generate("Hello there", GOOD, use_tqdm=False)[0].outputs[0].token_ids
    assert len(out) == 6
    return out


def assert_still_serving(llm: LLM, reference: list[int]) -> None:
    out = llm.generate(["Hello there", "Second request"], GOOD, use_tqdm=False)
    assert out[0].outputs[0].token_ids == reference
    assert out[1].outputs[0].finish_reason == "length"
    assert not llm.engine.has_unfinished()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(temperature=-0.5), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(max_tokens=-3), "max_tokens"),
    ],
    ids=["temperature<0", "top_p=0", "top_p=1.5", "max_tokens=0", "max_tokens<0"],
)
def test_bad_sampling_params(llm, reference, kwargs, field):  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=field) as ei:
        SamplingParams(**kwargs)
    assert "allowed" in str(ei.value)
    # a params object mutated after construction is caught at generate time, alone
    sp = SamplingParams(temperature=0, max_tokens=4)
    for k, v in kwargs.items():
        setattr(sp, k, v)
    with pytest.raises(ValueError, match=field):
        llm.generate(["Hello there", "fine"], [GOOD, sp], use_tqdm=False)
    assert_still_serving(llm, reference)


@pytest.mark.parametrize(
    ("prompt", "needle"),
    [
        ("", "empty prompt"),
        ({"prompt_token_ids": []}, "empty prompt"),
        ({"prompt_token_ids": [5, -1, 7]}, "outside the vocabulary"),
        ({"prompt_token_ids": [5, 49152]}, "outside the vocabulary"),
        ({"prompt_token_ids": [5, 10**9]}, "outside the vocabulary"),
        ({"prompt_token_ids": [7] * MAX_LEN}, "max_model_len"),
        ({"prompt_token_ids": [7] * (3 * MAX_LEN)}, "max_model_len"),
        (12345, "prompt must be"),
    ],
    ids=["empty-str", "empty-ids", "negative-id", "id=vocab", "huge-id", "len=max", "len>>max",
         "not-a-prompt"],
)
def test_bad_prompts(llm, reference, prompt, needle):  # type: ignore[no-untyped-def]
    with pytest.raises((ValueError, TypeError), match=needle) as ei:
        llm.generate(["Hello there", prompt], GOOD, use_tqdm=False)
    assert "request 1" in str(ei.value)  # names which request was bad
    assert_still_serving(llm, reference)


def test_bad_request_while_another_is_in_flight(llm, reference):  # type: ignore[no-untyped-def]
    """A bad request arriving mid-generation fails alone; the running one is unharmed."""
    engine = llm.engine
    ids = llm.get_tokenizer().encode("Hello there", add_special_tokens=False)
    rid = engine.add_request("Hello there", ids, GOOD)
    engine.step()  # prefill + first token
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.add_request(None, [1, 2, 10**6], GOOD)
    with pytest.raises(ValueError, match="temperature"):
        bad = SamplingParams(temperature=0)
        bad.temperature = -1.0
        engine.add_request(None, [1, 2, 3], bad)
    done = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    assert list(done) == [rid]
    assert done[rid].outputs[0].token_ids == reference
    assert_still_serving(llm, reference)


def test_mismatched_params_list(llm, reference):  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="SamplingParams"):
        llm.generate(["a", "b"], [GOOD], use_tqdm=False)
    assert_still_serving(llm, reference)


def test_generation_stops_at_context_limit(llm):  # type: ignore[no-untyped-def]
    out = llm.generate({"prompt_token_ids": [7] * (MAX_LEN - 4)},
                       SamplingParams(temperature=0, max_tokens=50, ignore_eos=True), use_tqdm=False)
    comp = out[0].outputs[0]
    assert len(comp.token_ids) == 4 and comp.finish_reason == "length"


def test_max_model_len_above_model_limit():
    with pytest.raises(ValueError, match="max_model_len"):
        LLM(model="tiny", max_model_len=10**6)


# ---- bad checkpoints -------------------------------------------------------------------


@pytest.fixture
def ckpt(tiny_checkpoint, tmp_path) -> Path:  # type: ignore[no-untyped-def]
    """A private, modifiable copy of a valid tiny checkpoint."""
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint("llama", perturb=False), dst)
    LLM(model=str(dst), kv_cache_tokens=4096)  # valid before we break it
    return dst


def test_missing_checkpoint_folder(tmp_path):  # type: ignore[no-untyped-def]
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        LLM(model=str(missing))


def test_folder_without_config(tmp_path):  # type: ignore[no-untyped-def]
    with pytest.raises(FileNotFoundError, match="config.json"):
        LLM(model=str(tmp_path))


@pytest.mark.parametrize("keep", [0.5, 0.99, 5e-6], ids=["half", "last-bytes", "header"])
def test_truncated_safetensors(ckpt, keep):  # type: ignore[no-untyped-def]
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: max(int(len(data) * keep), 1)])
    with pytest.raises(ValueError, match="model.safetensors") as ei:
        LLM(model=str(ckpt))
    assert "truncated" in str(ei.value) or "corrupt" in str(ei.value)


def test_checkpoint_missing_a_tensor(ckpt):  # type: ignore[no-untyped-def]
    f = ckpt / "model.safetensors"
    tensors = load_file(str(f))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(f), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="incomplete") as ei:
        LLM(model=str(ckpt))
    assert "model.layers.1.mlp.up_proj.weight" in str(ei.value)


def test_checkpoint_tensor_with_wrong_shape(ckpt):  # type: ignore[no-untyped-def]
    f = ckpt / "model.safetensors"
    tensors = load_file(str(f))
    tensors["model.norm.weight"] = tensors["model.norm.weight"][:3].clone()
    save_file(tensors, str(f), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="norm.weight"):
        LLM(model=str(ckpt))


@pytest.mark.parametrize("model_type", ["gpt2", "my_custom_arch"])
def test_unsupported_model_type(ckpt, model_type):  # type: ignore[no-untyped-def]
    cfg_file = ckpt / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["model_type"] = model_type
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=model_type) as ei:
        LLM(model=str(ckpt))
    for supported in ("llama", "mistral", "qwen2", "qwen3"):
        assert supported in str(ei.value)


class _Trap:
    """Unpickling this creates ``path``: proof that a loader ran pickle."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def test_pickle_checkpoint_is_refused_never_unpickled(ckpt, tmp_path):  # type: ignore[no-untyped-def]
    marker = tmp_path / "unpickled"
    (ckpt / "model.safetensors").unlink()
    with open(ckpt / "pytorch_model.bin", "wb") as fh:
        pickle.dump(_Trap(marker), fh)
    with pytest.raises(ValueError, match="safetensors") as ei:
        LLM(model=str(ckpt))
    assert "pickle" in str(ei.value)
    assert not marker.exists(), "the .bin file was unpickled"


def test_hub_id_while_offline(monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable at import time, which has already happened
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError) as ei:
        LLM(model="someorg/some-model", overrides=[f"cache_dir={tmp_path}"])
    msg = str(ei.value)
    assert "someorg/some-model" in msg
    assert "offline" in msg.lower() or "unreachable" in msg.lower()

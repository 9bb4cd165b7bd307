"""Shared fixtures: tiny random checkpoints per family, the SmolLM2 engine, the HF oracle.

The HF transformers model is the oracle for model math (DESIGN.md). Loads are expensive on a
2-core CPU, so the SmolLM2 engine and its HF twin are session-scoped and every tiny
checkpoint is written once per session (into pytest's temp folder, never into the repo).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
TINY_FAMILIES = ("llama", "llama3", "mistral", "qwen2", "qwen3")


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    """The converted default-model folder (its tokenizer is shared by the tiny models).
    The first call on a fresh cache converts the embedded GGUF (~20 s)."""
    from infer.models.sources import resolve_model_path

    return resolve_model_path(None)


def perturb_1d_tensors(folder: Path, seed: int = 0, scale: float = 0.2) -> None:
    """Add noise to every 1-D tensor (norm weights, biases) of ``folder/model.safetensors``.

    transformers initializes norms to exactly 1 and biases to exactly 0, so an engine that
    ignored them would still match the oracle; after this, it cannot.
    """
    f = folder / "model.safetensors"
    tensors = load_file(str(f))
    g = torch.Generator().manual_seed(seed)
    for name, t in tensors.items():
        if t.dim() == 1:
            tensors[name] = t + scale * torch.randn(t.shape, generator=g, dtype=t.dtype)
    save_file(tensors, str(f), metadata={"format": "pt"})


@pytest.fixture(scope="session")
def tiny_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path
) -> Callable[..., Path]:
    """``tiny_checkpoint(family, perturb=True)`` -> a fresh HF folder with random weights,
    written by transformers (``infer.models.tiny.make_tiny_checkpoint``) into a temp dir.
    Cached per (family, perturb) for the session: callers that modify files must copy it."""
    from infer.models.tiny import make_tiny_checkpoint

    made: dict[tuple[str, bool], Path] = {}

    def make(family: str, perturb: bool = True) -> Path:
        key = (family, perturb)
        if key not in made:
            out = tmp_path_factory.mktemp(f"tiny-{family}{'-perturbed' if perturb else ''}")
            make_tiny_checkpoint(out, family, tokenizer_dir)
            if perturb:
                perturb_1d_tensors(out)
            made[key] = out
        return made[key]

    return make


def hf_load(folder: Path) -> torch.nn.Module:
    """The HF transformers model of ``folder`` in fp32, eval mode (the oracle)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


@torch.inference_mode()
def hf_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """fp32 logits [len(ids), vocab] of one unpadded sequence."""
    return model(torch.tensor([ids])).logits[0].float()


@torch.inference_mode()
def hf_greedy(model: torch.nn.Module, ids: list[int], n: int) -> list[int]:
    """``n`` greedy tokens from HF ``generate(do_sample=False)``, EOS not stopping it."""
    out = model.generate(
        torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        do_sample=False, max_new_tokens=n, eos_token_id=None, pad_token_id=0,
    )
    new = out[0, len(ids):].tolist()
    assert len(new) == n, f"HF generate stopped early ({len(new)} of {n} tokens)"
    return new


def engine_prefill_logits(llm, ids: list[int]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """fp32 logits [len(ids), vocab] for every prompt position, through the engine's own
    plumbing: KV slots from the scheduler's cache manager, one ``ModelRunner.execute``."""
    from infer.sampling_params import SamplingParams
    from infer.scheduler import ScheduledSeq
    from infer.sequence import Sequence

    engine = llm.engine
    cache = engine.scheduler.cache
    seq = Sequence(
        seq_id=10**9, request_id="prefill-logits", prompt=None, prompt_token_ids=list(ids),
        params=SamplingParams(temperature=0), arrival=0.0,
    )
    assert cache.allocate(seq, len(ids)), "KV cache too small for the test prompt"
    try:
        return engine.runner.execute(
            [ScheduledSeq(seq, len(ids))], [cache.block_table(seq)], list(range(len(ids)))
        )
    finally:
        cache.free(seq)


@pytest.fixture(scope="session")
def oracle() -> SimpleNamespace:
    """The comparison helpers above, for tests (conftest modules are not importable by name:
    tests/kernels has its own)."""
    return SimpleNamespace(
        hf_load=hf_load, hf_logits=hf_logits, hf_greedy=hf_greedy,
        engine_logits=engine_prefill_logits, perturb=perturb_1d_tensors,
    )


@pytest.fixture(scope="session")
def smollm2() -> Iterator:  # type: ignore[type-arg]
    """The default engine, ``LLM()`` (SmolLM2-135M-Instruct, fp32), built once."""
    from infer import LLM

    llm = LLM()
    yield llm
    del llm
    gc.collect()


@pytest.fixture(scope="session")
def smollm2_hf(smollm2) -> torch.nn.Module:  # type: ignore[no-untyped-def]
    """HF transformers' model of the same converted folder (``llm.model_path``)."""
    return hf_load(smollm2.model_path)

"""Builds the ``spec`` config group's proposer and policy.

Lookup proposers (none, ngram, suffix) are plain classes. Model-based ones (``spec=draft``,
``spec=self``) are declared ``_partial_: true`` in their YAML and receive the target's
``TargetContext`` here, because they need the target's model, device and KV geometry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from infer.cache.paged import PagedKVCacheManager
from infer.layers.ops import Ops
from infer.runner import KVSpec, ModelRunner
from infer.sampling import Sampler
from infer.spec.draft import DraftModelProposer
from infer.spec.layer_skip import LayerSkipModel


@dataclass
class TargetContext:
    """What a model-based proposer needs to know about the target engine."""

    model: torch.nn.Module
    folder: Path
    dtype: torch.dtype
    device: torch.device
    ops: Ops
    max_model_len: int
    vocab_size: int
    kv: KVSpec  # the target's KV geometry (a draft with the same architecture mirrors it)
    attention: DictConfig  # the attention group (a fresh backend instance per model)
    sampler: Sampler
    cache_dir: str | None = None
    tokenizer: Any = None  # for a draft quant method that calibrates on text


def build_spec(spec: DictConfig, target: TargetContext) -> tuple[Any, Any]:
    """(proposer, policy) of the ``spec`` config group."""
    proposer = instantiate(spec.proposer)
    if not hasattr(proposer, "propose") and callable(proposer):
        # ``_partial_: true``: a factory still waiting for the target (model-based proposers)
        proposer = proposer(target=target)
    policy = instantiate(spec.policy) if spec.get("policy") is not None else None
    return proposer, policy


def _draft_runner(
    target: TargetContext, model: torch.nn.Module, num_layers: int, num_kv_heads: int, head_dim: int,
    kv_cache_tokens: int | None, layers: list[int] | None,
) -> tuple[ModelRunner, Any]:
    """A runner with its own backend instance and KV memory, plus its block manager.
    kv_cache_tokens: the draft's KV capacity (None = as many tokens as the target's)."""
    bs = target.kv.block_size
    tokens = int(kv_cache_tokens) if kv_cache_tokens is not None else target.kv.num_tokens
    if tokens < target.max_model_len:
        raise ValueError(
            f"spec.kv_cache_tokens={tokens} is less than max_model_len={target.max_model_len}; "
            "the draft's KV must hold at least one whole sequence"
        )
    kv = KVSpec(-(-tokens // bs), bs, num_layers, num_kv_heads, head_dim, target.kv.dtype)
    backend = instantiate(target.attention.backend)
    return ModelRunner(model, backend, kv, target.device, layers=layers), PagedKVCacheManager(kv.num_blocks, bs)


def _quant_method(name: str) -> Any:
    """A fresh QuantMethod instance of the ``quant`` group option ``name``."""
    from infer.config_loader import compose_config, group_options

    if name not in group_options("quant"):
        raise ValueError(f"unknown draft quant {name!r}; allowed: {group_options('quant')}")
    return instantiate(compose_config([f"quant={name}"]).quant.method)


def _load_draft(target: TargetContext, path: str | None, quant: str) -> torch.nn.Module:
    """Load a draft checkpoint (same tokenizer: same vocabulary) with its own quant method."""
    from infer.models.config import ModelArgs
    from infer.models.loader import load_hf_config, load_model
    from infer.models.sources import resolve_model_path

    folder = resolve_model_path(path, target.cache_dir) if path is not None else target.folder
    args = ModelArgs.from_hf(load_hf_config(folder))
    if args.vocab_size != target.vocab_size:
        raise ValueError(
            f"spec.model={path!r} has a vocabulary of {args.vocab_size} tokens but the target has "
            f"{target.vocab_size}; a draft model must share the target's tokenizer"
        )
    return load_model(
        folder, _quant_method(quant), target.dtype, target.device, target.max_model_len, target.ops,
        target.tokenizer,
    )


def draft_proposer(
    target: TargetContext, num_tokens: int, model: str | None, quant: str = "none",
    kv_cache_tokens: int | None = None,
) -> DraftModelProposer:
    """``spec=draft spec.model=<path|hub id|gguf>``: any checkpoint with the target's
    tokenizer (null = the target's own checkpoint: an exact copy, for tests)."""
    m = _load_draft(target, model, quant)
    a = m.args  # type: ignore[attr-defined]
    runner, cache = _draft_runner(target, m, a.num_layers, a.num_kv_heads, a.head_dim, kv_cache_tokens, None)
    return DraftModelProposer(num_tokens, runner, cache, target.sampler, name="draft")


def self_proposer(
    target: TargetContext, num_tokens: int, mode: str, skip_layers: list[int] | None = None,
    draft_quant: str = "int8", kv_cache_tokens: int | None = None,
) -> DraftModelProposer:
    """``spec=self``: the target drafts for itself. mode=layers: ``skip_layers`` of its
    decoder layers skipped (weights shared); mode=quant: its checkpoint quantized by
    ``draft_quant`` (a second, smaller copy of the weights)."""
    a = target.model.args  # type: ignore[attr-defined]
    if mode == "layers":
        skip = {int(i) for i in (skip_layers or [])}
        keep = [i for i in range(a.num_layers) if i not in skip]
        m: torch.nn.Module = LayerSkipModel(target.model, keep)
        layers: list[int] | None = keep
    elif mode == "quant":
        m, layers = _load_draft(target, None, draft_quant), None
    else:
        raise ValueError(f"spec.mode={mode!r} is invalid; allowed: layers, quant")
    # layers mode runs the target's own (possibly tensor-sharded) layers: this rank's KV heads
    kv_heads = target.kv.num_kv_heads if mode == "layers" else a.num_kv_heads
    runner, cache = _draft_runner(target, m, a.num_layers, kv_heads, a.head_dim, kv_cache_tokens, layers)
    return DraftModelProposer(num_tokens, runner, cache, target.sampler, name=f"self-{mode}")

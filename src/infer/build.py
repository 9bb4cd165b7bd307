"""The one place that turns a composed config into objects."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from infer.config_checks import check_engine_keys
from infer.engine import Engine
from infer.layers.ops import resolve_ops
from infer.models.loader import load_model
from infer.models.sources import resolve_model_path
from infer.models.tokenizer import load_tokenizer
from infer.quant.kv_cache import parse_kv_cache_dtype
from infer.runner import KVSpec, ModelRunner
from infer.sampling import Sampler
from infer.scheduler import Scheduler
from infer.spec.factory import TargetContext, build_spec
from infer.utils import parse_device, parse_dtype, set_threads


def kv_num_blocks(e: DictConfig, bytes_per_token: int, block_size: int) -> int:
    """Blocks from ``engine.kv_cache_tokens`` if set, else from ``engine.kv_cache_memory_gb``."""
    if e.kv_cache_tokens is not None:  # checked >= 1 (config_checks)
        tokens = int(e.kv_cache_tokens)
    else:
        tokens = int(float(e.kv_cache_memory_gb) * 2**30) // bytes_per_token
    return max(tokens // block_size, 0)


def build(cfg: DictConfig) -> Engine:
    """Model, KV memory, attention backend, cache manager, scheduler, sampler, proposer."""
    check_engine_keys(cfg)  # zero/negative values are errors, never "unset"
    set_threads(cfg.get("threads"))
    device = parse_device(cfg.get("device", "auto"))
    dtype = parse_dtype(cfg.model.dtype)
    folder = resolve_model_path(cfg.model.path, cfg.get("cache_dir"))
    # before the weights, so a missing tokenizer fails fast; None = token ids only
    tokenizer = None
    if not cfg.get("skip_tokenizer_init", False):
        tokenizer = load_tokenizer(folder, cfg.model.get("tokenizer"), cfg.get("cache_dir"))
    quant = instantiate(cfg.quant.method)
    instantiate(cfg.parallel.context)  # validates; single-process engines need nothing more

    from infer.models.config import ModelArgs
    from infer.models.loader import load_hf_config

    args = ModelArgs.from_hf(load_hf_config(folder))
    e = cfg.engine
    limit = args.max_position_embeddings
    if args.sliding_window:
        # no sliding-window attention kernels yet: serving within the window is exact
        limit = min(limit, int(args.sliding_window))
    max_len = limit if e.max_model_len is None else int(e.max_model_len)
    if max_len > limit:
        raise ValueError(f"engine.max_model_len={max_len} exceeds the model's limit {limit}")
    k = cfg.kernels
    ops = resolve_ops(k.impl, OmegaConf.to_container(k.get("overrides") or {}), device, dtype)
    model = load_model(folder, quant, dtype, device, max_len, ops, tokenizer)

    block_size = max_len if cfg.attention.block_size is None else int(cfg.attention.block_size)
    kv_dtype = parse_kv_cache_dtype(cfg.get("kv_cache_dtype"), dtype)
    probe = KVSpec(1, block_size, args.num_layers, args.num_kv_heads, args.head_dim, kv_dtype)
    num_blocks = kv_num_blocks(e, probe.bytes_per_token, block_size)
    if num_blocks * block_size < max_len:
        raise ValueError(
            f"KV cache holds {num_blocks * block_size} tokens, less than max_model_len={max_len}; "
            "raise engine.kv_cache_memory_gb / engine.kv_cache_tokens or lower engine.max_model_len"
        )
    kv = KVSpec(num_blocks, block_size, args.num_layers, args.num_kv_heads, args.head_dim, kv_dtype)
    backend = instantiate(cfg.attention.backend)
    cache = instantiate(cfg.attention.cache, num_blocks=num_blocks, block_size=block_size)
    runner = ModelRunner(model, backend, kv, device)
    scheduler = Scheduler(
        cache, int(e.max_num_seqs), int(e.max_num_batched_tokens), bool(e.chunked_prefill),
        policy=str(cfg.attention.get("schedule_policy", "fcfs")), max_model_len=max_len,
        lpm_max_wait_steps=int(cfg.attention.get("lpm_max_wait_steps", 64)),
    )
    eos = list(args.eos_token_ids)
    if tokenizer is not None and tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    sampler = Sampler(args.vocab_size)
    proposer, policy = build_spec(cfg.spec, TargetContext(
        model, folder, dtype, device, ops, max_len, args.vocab_size, kv, cfg.attention, sampler,
        cfg.get("cache_dir"), tokenizer,
    ))
    engine = Engine(
        runner, scheduler, sampler, tokenizer, proposer,
        max_len, args.vocab_size, eos, seed=int(e.seed), policy=policy,
        model_path=folder, config=cfg,
    )
    torch.manual_seed(int(e.seed))
    return engine

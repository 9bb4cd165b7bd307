"""The one place that turns a composed config into objects."""

from __future__ import annotations

import os

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from infer.config_checks import check_engine_keys, positive_int
from infer.engine import Engine
from infer.layers.ops import resolve_ops
from infer.malloc_tuning import keep_freed_memory
from infer.models.loader import load_model
from infer.models.sources import resolve_model_path
from infer.models.tokenizer import load_tokenizer
from infer.parallel.comm import COMM_KINDS
from infer.parallel.partition import head_shard, max_local_kv_heads, stage_layers
from infer.parallel.runner import ParallelModelRunner
from infer.parallel.state import ParallelState, build_state
from infer.quant.kv_cache import parse_kv_cache_dtype
from infer.runner import KVSpec, ModelRunner
from infer.sampling import Sampler
from infer.scheduler import Scheduler
from infer.spec.factory import TargetContext, build_spec
from infer.utils import available_cores, parse_device, parse_dtype, set_threads


def kv_num_blocks(e: DictConfig, bytes_per_token: int, block_size: int) -> int:
    """Blocks from ``engine.kv_cache_tokens`` if set, else from ``engine.kv_cache_memory_gb``."""
    if e.kv_cache_tokens is not None:  # checked >= 1 (config_checks)
        tokens = int(e.kv_cache_tokens)
    else:
        tokens = int(float(e.kv_cache_memory_gb) * 2**30) // bytes_per_token
    return max(tokens // block_size, 0)


def parallel_state(par: DictConfig, device: torch.device) -> ParallelState:
    """The ``parallel`` group -> this process's ParallelState (joins the process group
    torchrun or the executor started when there is more than one rank)."""
    tp = positive_int("parallel.tp_size", par.get("tp_size"), False)
    pp = positive_int("parallel.pp_size", par.get("pp_size"), False)
    comm = str(par.get("comm", "auto"))
    if comm not in COMM_KINDS:
        raise ValueError(f"parallel.comm={comm!r}: allowed values are {', '.join(COMM_KINDS)}")
    return build_state(int(tp), int(pp), comm, device)  # type: ignore[arg-type]


def max_stage_layers(num_layers: int, pp_size: int) -> int:
    """Layers of the largest pipeline stage."""
    return max(len(stage_layers(num_layers, pp_size, r)) for r in range(pp_size))


def build(cfg: DictConfig) -> Engine:
    """Model, KV memory, attention backend, cache manager, scheduler, sampler, proposer."""
    check_engine_keys(cfg)  # zero/negative values are errors, never "unset"
    device = parse_device(cfg.get("device", "auto"))
    state = parallel_state(cfg.parallel, device)
    threads = cfg.get("threads")
    if threads is None and state.world_size > 1:
        # the ranks on this node share its cores instead of each taking all of them
        threads = max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", state.world_size)))
    set_threads(threads)
    if device.type == "cpu":
        keep_freed_memory()  # activations reuse mapped memory instead of page-faulting anew
    dtype = parse_dtype(cfg.model.dtype)
    folder = resolve_model_path(cfg.model.path, cfg.get("cache_dir"))
    # before the weights, so a missing tokenizer fails fast; None = token ids only
    tokenizer = None
    if not cfg.get("skip_tokenizer_init", False):
        tokenizer = load_tokenizer(folder, cfg.model.get("tokenizer"), cfg.get("cache_dir"))
    quant = instantiate(cfg.quant.method)

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
    ops = resolve_ops(k.impl, OmegaConf.to_container(k.get("overrides") or {}), device, dtype,
                      str(k.get("decoder_stack", "auto")))
    model = load_model(folder, quant, dtype, device, max_len, ops, tokenizer, parallel=state)

    block_size = max_len if cfg.attention.block_size is None else int(cfg.attention.block_size)
    kv_dtype = parse_kv_cache_dtype(cfg.get("kv_cache_dtype"), dtype)
    # every rank sizes its KV memory for the largest stage and head share, so all ranks'
    # schedulers see the same number of blocks; each allocates only its own layers and heads
    probe = KVSpec(1, block_size, max_stage_layers(args.num_layers, state.pp_size),
                   max_local_kv_heads(args.num_heads, args.num_kv_heads, state.tp_size),
                   args.head_dim, kv_dtype)
    num_blocks = kv_num_blocks(e, probe.bytes_per_token, block_size)
    if num_blocks * block_size < max_len:
        raise ValueError(
            f"KV cache holds {num_blocks * block_size} tokens, less than max_model_len={max_len}; "
            "raise engine.kv_cache_memory_gb / engine.kv_cache_tokens or lower engine.max_model_len"
        )
    local_kv = head_shard(args.num_heads, args.num_kv_heads, state.tp_size, state.tp_rank).num_kv
    kv = KVSpec(num_blocks, block_size, args.num_layers, local_kv, args.head_dim, kv_dtype)
    backend = instantiate(cfg.attention.backend)
    cache = instantiate(cfg.attention.cache, num_blocks=num_blocks, block_size=block_size)
    if state.world_size > 1:
        runner: ModelRunner = ParallelModelRunner(
            model, backend, kv, device, state,
            positive_int("parallel.micro_batches", cfg.parallel.get("micro_batches"), True, "pp_size"))
    else:
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
    if state.pp_size > 1 and cfg.spec.get("name") == "self" and cfg.spec.get("mode") == "layers":
        raise ValueError("spec=self spec.mode=layers drafts with the target's own layers, which "
                         "parallel.pp_size > 1 splits over processes; use spec.mode=quant, "
                         "spec=ngram|suffix|draft, or parallel.pp_size=1")
    proposer, policy = build_spec(cfg.spec, TargetContext(
        model, folder, dtype, device, ops, max_len, args.vocab_size, kv, cfg.attention, sampler,
        cfg.get("cache_dir"), tokenizer,
    ))
    engine = Engine(
        runner, scheduler, sampler, tokenizer, proposer,
        max_len, args.vocab_size, eos, seed=int(e.seed), policy=policy,
        model_path=folder, config=cfg,
    )
    engine.parallel = state
    torch.manual_seed(int(e.seed))
    return engine

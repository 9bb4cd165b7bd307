"""Checks of the numeric engine keys, run by ``build`` before anything is loaded.

YAML ``null`` means "unset" for the optional keys (max_model_len, kv_cache_tokens, threads,
attention.block_size); a zero or negative value is never read as unset: it is an error that
names the key and what it accepts.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from infer.sampling_params import MAX_SEED


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def positive_int(key: str, v: Any, optional: bool, unset: str = "") -> int | None:
    """``v`` as an int >= 1; None when ``optional`` and ``v`` is None. ``unset`` says what
    null means, for the message."""
    if v is None and optional:
        return None
    if not _is_int(v) or v < 1:
        allowed = f"null ({unset}) or an integer >= 1" if optional else "an integer >= 1"
        raise ValueError(f"{key}={v!r}: allowed values are {allowed}")
    return int(v)


def check_engine_keys(cfg: DictConfig) -> None:
    """Raise ValueError naming the first bad key among the engine's numeric settings."""
    e = cfg.engine
    positive_int("engine.max_model_len", e.get("max_model_len"), True, "the model's own limit")
    positive_int("engine.kv_cache_tokens", e.get("kv_cache_tokens"), True, "use kv_cache_memory_gb")
    positive_int("engine.max_num_seqs", e.get("max_num_seqs"), False)
    positive_int("engine.max_num_batched_tokens", e.get("max_num_batched_tokens"), False)
    gb = e.get("kv_cache_memory_gb")
    if e.get("kv_cache_tokens") is None and (
        isinstance(gb, bool) or not isinstance(gb, (int, float)) or not gb > 0
    ):
        raise ValueError(
            f"engine.kv_cache_memory_gb={gb!r}: allowed values are a number > 0 "
            "(or set engine.kv_cache_tokens)"
        )
    if type(e.get("chunked_prefill")) is not bool:  # 0/1 or "yes" would pass a truthiness test
        raise ValueError(f"engine.chunked_prefill={e.get('chunked_prefill')!r}: allowed values are true, false")
    seed = e.get("seed")
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:  # torch.Generator's 64-bit range
        raise ValueError(f"engine.seed={seed!r}: allowed values are integers in [0, {MAX_SEED}]")
    positive_int("threads", cfg.get("threads"), True, "the cores this process may use")
    positive_int("attention.block_size", cfg.attention.get("block_size"), True,
                 "one contiguous region per sequence")

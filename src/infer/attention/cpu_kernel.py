"""Loader for the CPU paged-attention extension (csrc/paged_attention_cpu.cpp).

Built once with the system C++ compiler through torch.utils.cpp_extension and cached under
$INFER_CACHE_DIR/torch_extensions. If the build fails (no compiler), callers fall back to
the pure-torch path; ``available()`` tells which.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch

from infer.cpp_ext import load_cpp_extension

_SRC = Path(__file__).parent / "csrc" / "paged_attention_cpu.cpp"
#: compiler flags of the extension (also for A/B builds of other versions of the source);
#: -fno-math-errno lets expf vectorize (libmvec), no other fast-math licence taken
BUILD_FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno"]


@lru_cache(maxsize=1)
def load() -> ModuleType | None:
    """Compile (first time) and import the extension; None if that is impossible."""
    return load_cpp_extension("infer_paged_attention_cpu", _SRC, BUILD_FLAGS, "CPU paged-attention kernel")


def available() -> bool:
    return load() is not None


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dim is unit-stride (the kernels take such views in place:
    q, k, v are slices of the fused qkv projection), else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def kv_cache_shapes(
    num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The kernel's cache layout: K [NB, Hk, D, BS] (transposed in-block), V [NB, Hk, BS, D]."""
    return (num_blocks, num_kv_heads, head_dim, block_size), (num_blocks, num_kv_heads, block_size, head_dim)


def store_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write k/v [T, Hk, D] (views with a unit last stride are read in place) into the
    kernel-layout caches at int64 ``slot_mapping`` [T]."""
    mod = load()
    assert mod is not None
    mod.store_kv_fwd(_unit_last(k), _unit_last(v), k_cache, v_cache, slot_mapping)


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal paged attention, fp32 CPU. q [T, Hq, D] (a strided view is read in place);
    caches in ``kv_cache_shapes`` layout; block_tables/query_start_loc/context_lens int32.
    Returns [T, Hq, D] contiguous."""
    mod = load()
    assert mod is not None
    return mod.paged_attention_fwd(
        _unit_last(q), k_cache, v_cache, block_tables, query_start_loc, context_lens, scale
    )

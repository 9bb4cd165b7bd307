"""Loader for the CPU paged-attention extension (csrc/paged_attention_cpu.cpp).

Built once with the system C++ compiler through torch.utils.cpp_extension and cached under
$INFER_CACHE_DIR/torch_extensions. If the build fails (no compiler), callers fall back to
the pure-torch path; ``available()`` tells which.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch

from infer.models.sources import default_cache_dir

_SRC = Path(__file__).parent / "csrc" / "paged_attention_cpu.cpp"


@lru_cache(maxsize=1)
def load() -> ModuleType | None:
    """Compile (first time) and import the extension; None if that is impossible."""
    if os.environ.get("INFER_DISABLE_CPU_KERNEL"):
        return None
    from torch.utils.cpp_extension import load as load_ext

    # the source hash is part of the name: an edited kernel never meets a stale build
    digest = hashlib.sha256(_SRC.read_bytes()).hexdigest()[:10]
    name = f"infer_paged_attention_cpu_{digest}"
    build = default_cache_dir() / "torch_extensions" / f"torch{torch.__version__}" / name
    build.mkdir(parents=True, exist_ok=True)
    try:
        return load_ext(
            name=name,
            sources=[str(_SRC)],
            # -fno-math-errno lets expf vectorize (libmvec); no other fast-math licence taken
            extra_cflags=["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno"],
            build_directory=str(build),
            verbose=False,
        )
    except Exception as e:  # no compiler, unsupported platform ...
        warnings.warn(f"CPU paged-attention kernel unavailable, using torch ops: {e}", stacklevel=2)
        return None


def available() -> bool:
    return load() is not None


def kv_cache_shapes(
    num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The kernel's cache layout: K [NB, Hk, D, BS] (transposed in-block), V [NB, Hk, BS, D]."""
    return (num_blocks, num_kv_heads, head_dim, block_size), (num_blocks, num_kv_heads, block_size, head_dim)


def store_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write k/v [T, Hk, D] into the kernel-layout caches at int64 ``slot_mapping`` [T]."""
    mod = load()
    assert mod is not None
    mod.store_kv_fwd(k, v, k_cache, v_cache, slot_mapping)


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal paged attention, fp32 CPU. q [T, Hq, D]; caches in ``kv_cache_shapes`` layout;
    block_tables/query_start_loc/context_lens int32. Returns [T, Hq, D]."""
    mod = load()
    assert mod is not None
    return mod.paged_attention_fwd(
        q.contiguous(), k_cache, v_cache, block_tables, query_start_loc, context_lens, scale
    )

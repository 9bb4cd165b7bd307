"""Loader for the CPU paged-attention extension (csrc/paged_attention_cpu.cpp).

Built once with the system C++ compiler through torch.utils.cpp_extension and cached under
$INFER_CACHE_DIR/torch_extensions. If the build fails (no compiler), callers fall back to
the pure-torch path; ``available()`` tells which.
"""

from __future__ import annotations

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

    build = default_cache_dir() / "torch_extensions" / f"torch{torch.__version__}"
    build.mkdir(parents=True, exist_ok=True)
    try:
        return load_ext(
            name="infer_paged_attention_cpu",
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


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal paged attention, fp32 CPU. q [T, Hq, D]; caches [NB, BS, Hk, D];
    block_tables/query_start_loc/context_lens int32. Returns [T, Hq, D]."""
    mod = load()
    assert mod is not None
    return mod.paged_attention_fwd(
        q.contiguous(), k_cache, v_cache, block_tables, query_start_loc, context_lens, scale
    )

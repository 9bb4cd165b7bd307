"""Small shared helpers: dtype/device parsing, thread defaults."""

from __future__ import annotations

import os

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16' (or a torch.dtype) -> torch.dtype."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; allowed: {sorted(set(DTYPES))}")
    return DTYPES[name]


def parse_device(name: str | None) -> torch.device:
    """'auto' picks cuda when available, else cpu."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def available_cores() -> int:
    """CPU cores this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """Set torch intra-op threads (None: the cores this process may use). 0 is an error,
    not "unset": only null means the default."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(
            f"threads={threads!r}: allowed values are null (the cores this process may use) "
            "or an integer >= 1"
        )
    n = available_cores() if threads is None else int(threads)
    torch.set_num_threads(n)
    return n

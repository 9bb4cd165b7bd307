"""Keep freed activation memory in the process instead of returning it to the OS.

Why: a prefill step allocates tens of MB per op (GEMM outputs, norms, SiLU), frees them,
and allocates them again in the next layer. glibc serves blocks above its mmap threshold
(dynamic, at most 32 MiB) with fresh mmaps and trims the heap top back to the OS, so each
reuse page-faults and the kernel zeroes every 4 KiB page again (clear_page was ~4% of an
offline run's samples). Raising the mmap and trim thresholds makes such blocks come from the
heap and stay mapped, which is what the tcmalloc/jemalloc preloads CPU inference engines
recommend achieve without a preload. The cost: the process keeps up to 1 GiB of freed heap
mapped (resident) instead of returning it. glibc only; elsewhere (or with
INFER_NO_MALLOC_TUNING set) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
LIMIT = 1 << 30  # blocks up to 1 GiB from the heap; a heap top up to 1 GiB kept

_done = False


def keep_freed_memory() -> bool:
    """Apply the thresholds once per process; True if glibc took them."""
    global _done
    if _done:
        return True
    if os.environ.get("INFER_NO_MALLOC_TUNING"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, LIMIT)) and bool(mallopt(M_TRIM_THRESHOLD, LIMIT))
    return _done

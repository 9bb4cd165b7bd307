"""Long-lived CPU tensors on transparent huge pages (2 MiB), for weights the decode streams.

Why: single-stream decode reads every weight matrix once per token. On 4 KiB pages that is
one TLB miss (a page walk) per 4 KiB read, which caps the packed GEMV pass over SmolLM2's
538 MB at ~15 GB/s on this CPU; the same pass on 2 MiB pages ran at ~28 GB/s
(a pass of packed_linear over the model's shapes, one thread: 34.7 vs 19.2 ms).
Linux only maps anonymous memory with huge pages where the process asks (THP mode
"madvise", this machine's), so the weights are carved out of slabs mapped 2 MiB-aligned and
advised MADV_HUGEPAGE before their first touch.

Slabs are never returned while a tensor carved from them lives (a tensor keeps its slab's
storage alive); their untouched tails cost address space, not memory. Elsewhere (no THP,
not Linux, INFER_NO_HUGEPAGES set) ``empty`` is plain ``torch.empty``.
"""

from __future__ import annotations

import mmap
import os
import threading
from pathlib import Path

import torch

HUGE = 2 << 20  # bytes per transparent huge page on x86-64
SLAB = 64 << 20  # bytes mapped at a time (a 576 x 49152 fp32 LM head is 113 MB: own slab)
ALIGN = 64  # bytes between carved tensors (a cache line)

_lock = threading.Lock()
_slab: torch.Tensor | None = None  # uint8 view of the current slab, 2 MiB aligned
_used = 0


def enabled() -> bool:
    """Whether ``empty`` uses huge-page slabs (Linux THP in always|madvise mode)."""
    if os.environ.get("INFER_NO_HUGEPAGES") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False
    return "[never]" not in mode


def _new_slab(nbytes: int) -> torch.Tensor:
    size = -(-nbytes // HUGE) * HUGE
    m = mmap.mmap(-1, size + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = torch.frombuffer(m, dtype=torch.uint8)  # holds a reference to m
    skip = (-raw.data_ptr()) % HUGE
    m.madvise(mmap.MADV_HUGEPAGE, skip - skip % mmap.PAGESIZE, size + skip % mmap.PAGESIZE)
    return raw[skip : skip + size]


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized contiguous CPU tensor, on huge pages when ``enabled()``: fill it once
    (weights), keep it long."""
    if not enabled():
        return torch.empty(shape, dtype=dtype)
    global _slab, _used
    n = 1
    for s in shape:
        n *= s
    nbytes = n * torch.empty(0, dtype=dtype).element_size()
    with _lock:
        if nbytes > SLAB // 2:  # big matrices get their own slab: no tail wasted next to them
            slab, off = _new_slab(nbytes), 0
        else:
            if _slab is None or _used + nbytes > _slab.numel():
                _slab, _used = _new_slab(SLAB), 0
            slab, off = _slab, _used
            _used = -(-(off + nbytes) // ALIGN) * ALIGN
    return slab[off : off + nbytes].view(dtype).view(shape)

"""infer.hugepages: carved tensors are usable, disjoint and outlive the allocator's own slab
reference; when the OS allows THP, big ones start 2 MiB-aligned and are backed by huge pages;
INFER_NO_HUGEPAGES turns it off."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from infer import hugepages


def test_carved_tensors_are_disjoint_and_outlive_the_slab(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    shapes = [((3, 5), torch.bfloat16), ((64, 9), torch.float32), ((7,), torch.int64)]
    ts = [hugepages.empty(s, d) for s, d in shapes]
    for i, ((s, d), t) in enumerate(zip(shapes, ts)):
        assert t.shape == s and t.dtype == d and t.is_contiguous() and t.data_ptr() % 64 == 0
        t.fill_(i + 1)
    monkeypatch.setattr(hugepages, "_slab", None)  # the allocator forgets its slab
    gc.collect()
    for i, t in enumerate(ts):
        assert bool((t == i + 1).all()), "a carved tensor was overwritten or freed"


@pytest.mark.skipif(not hugepages.enabled(), reason="no transparent huge pages here")
def test_big_tensor_is_aligned_and_on_huge_pages() -> None:
    t = hugepages.empty((2560, 4096), torch.float32)  # 40 MiB > SLAB / 2: its own slab
    assert t.data_ptr() % hugepages.HUGE == 0
    before = _anon_huge_kb()
    t.fill_(1.0)
    assert _anon_huge_kb() - before >= 20 * 1024  # at least half of it on 2 MiB pages


def test_disabled_by_env(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("INFER_NO_HUGEPAGES", "1")
    assert not hugepages.enabled()
    assert hugepages.empty((2, 3), torch.float32).shape == (2, 3)


def _anon_huge_kb() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0

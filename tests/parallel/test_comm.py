"""Communicators across real processes (gloo process group on 127.0.0.1; groups of 2 and 3 ranks).

Oracles: gloo (TorchDistComm) and, for sums, the rank-ordered reference every rank rebuilds
locally (comm_workers.py). Exactness: ShmComm adds the ranks' buffers in rank order on every
rank, so results are compared bit for bit. Against gloo, fp32 sums of two ranks are exact
(a + b == b + a); with three ranks gloo's ring associates differently per chunk, so random data
is compared within 1e-6 and data whose sums are exact in fp32 (small integers / 8) bit for bit.
"""

from __future__ import annotations

import glob
import os
import uuid

import comm_workers as w
import pytest
import torch

from infer.parallel.comm import COMM_KINDS, SingleComm, make_comm
from infer.parallel.comm.local import run_local

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm (Linux)")


def _prefix() -> str:
    return f"infer_test_{uuid.uuid4().hex[:8]}"


def test_shm_matches_gloo_and_cleans_up() -> None:
    """Three processes: a two-rank group (global ranks 1, 2), then all three."""
    prefix = _prefix()
    try:
        run_local(w.run_all, 3, prefix, (3000, 1000))
    finally:
        left = glob.glob(f"/dev/shm/{prefix}*")
    assert not left, f"shared-memory segments left behind: {left}"


def test_single_process_needs_no_group() -> None:
    c = make_comm("auto")
    assert isinstance(c, SingleComm)
    x = torch.randn(4, 3)
    assert c.all_reduce_sum(x) is x and torch.equal(c.all_gather(x), x)
    with pytest.raises(ValueError, match="src=1"):
        c.broadcast(x, src=1)


def test_unknown_kind_names_the_field() -> None:
    with pytest.raises(ValueError, match="parallel.comm='tcp'") as ei:
        make_comm("tcp")
    assert all(k in str(ei.value) for k in COMM_KINDS)

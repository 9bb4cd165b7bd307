"""make_comm: the ``parallel.comm`` choice (auto | gloo | shm | nccl) -> a Communicator."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.distributed as dist

from infer.parallel.comm.base import Communicator, SingleComm
from infer.parallel.comm.shm import ShmComm, ShmUnavailable
from infer.parallel.comm.torch_dist import TorchDistComm

COMM_KINDS = ("auto", "gloo", "shm", "nccl")


def make_comm(
    kind: str = "auto",
    group: dist.ProcessGroup | None = None,
    device: str | torch.device | None = None,
    **shm_options: Any,
) -> Communicator:
    """The communicator for ``group`` (None = world) whose tensors live on ``device``.

    ``auto``: nccl for CUDA tensors; shared memory when every rank is on this node (CPU);
    gloo otherwise (several nodes, or shared memory unavailable here). ``shm_options`` go to
    ``ShmComm`` (capacity_bytes, timeout_s, shm_dir, prefix). A one-process group (or no
    torch.distributed at all) gets ``SingleComm``. Collective: every rank of ``group`` must call
    it, with the same ``kind``.
    """
    if kind not in COMM_KINDS:
        raise ValueError(f"parallel.comm={kind!r}: allowed values are {', '.join(COMM_KINDS)}")
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return SingleComm()
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    backend = str(dist.get_backend(group))
    if kind == "auto":
        kind = "nccl" if dev.type == "cuda" else "shm"
        if kind == "shm":
            try:
                return ShmComm(group, **shm_options)
            except ShmUnavailable as e:  # raised on every rank alike, so all fall back together
                warnings.warn(f"parallel.comm=auto: using gloo ({e})", stacklevel=2)
                kind = "gloo"
    if kind == "shm":
        if dev.type != "cpu":
            raise ValueError(f"parallel.comm=shm works on CPU tensors, not {dev.type}")
        return ShmComm(group, **shm_options)
    if kind not in backend:  # e.g. "gloo", "nccl" or "cpu:gloo,cuda:nccl"
        raise ValueError(
            f"parallel.comm={kind}: the process group's backend is {backend!r}; "
            f"create it with backend={kind!r} (or 'cpu:gloo,cuda:nccl')"
        )
    return TorchDistComm(group)

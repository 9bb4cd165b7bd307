"""ParallelState: this process's place in the tensor x pipeline grid and its communicators.

Global rank layout: ``rank = pp_rank * tp_size + tp_rank`` (the ranks of one pipeline stage
are consecutive, so a tensor-parallel group sits on one node when nodes hold whole stages).
Every rank of the world builds the same groups in the same order (torch.distributed's rule).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from infer.parallel.comm import Communicator, SingleComm, make_comm


@dataclass
class CommStats:
    """Time spent in collectives and point-to-point transfers, and bytes all-reduced."""

    seconds: float = 0.0
    allreduce_bytes: int = 0
    calls: int = 0


class CountingComm:
    """A Communicator that times every call into ``stats`` (same interface as the wrapped one)."""

    def __init__(self, inner: Communicator, stats: CommStats) -> None:
        self.inner = inner
        self.stats = stats
        self.rank = inner.rank
        self.world_size = inner.world_size

    def _timed(self, fn, *args):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        out = fn(*args)
        self.stats.seconds += time.perf_counter() - t
        self.stats.calls += 1
        return out

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        self.stats.allreduce_bytes += x.numel() * x.element_size()
        return self._timed(self.inner.all_reduce_sum, x)

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        return self._timed(self.inner.broadcast, x, src)

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        return self._timed(self.inner.all_gather, x)

    def gather(self, x: torch.Tensor, dst: int = 0) -> torch.Tensor | None:
        return self._timed(self.inner.gather, x, dst)

    def barrier(self) -> None:
        self._timed(self.inner.barrier)

    def close(self) -> None:
        self.inner.close()


@dataclass
class ParallelState:
    """Ranks, sizes and communicators of this process (``single()`` for one process).

    tp_comm: collectives among the tensor-parallel ranks of this stage.
    world_comm: collectives among all ranks (logits and accepted tokens are broadcast here).
    Pipeline hidden states go point to point (``send`` / ``recv``) over torch.distributed.
    """

    tp_rank: int = 0
    tp_size: int = 1
    pp_rank: int = 0
    pp_size: int = 1
    tp_comm: Communicator = field(default_factory=SingleComm)
    world_comm: Communicator = field(default_factory=SingleComm)
    stats: CommStats = field(default_factory=CommStats)

    @property
    def rank(self) -> int:
        return self.pp_rank * self.tp_size + self.tp_rank

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def output_rank(self) -> int:
        """Global rank whose logits every rank receives (last stage, tensor rank 0)."""
        return (self.pp_size - 1) * self.tp_size

    def stage_rank(self, pp_rank: int) -> int:
        """Global rank of this process's tensor column in stage ``pp_rank``."""
        return pp_rank * self.tp_size + self.tp_rank

    def send(self, x: torch.Tensor, dst_stage: int) -> dist.Work:
        """Start sending ``x`` to the same tensor rank of stage ``dst_stage`` (non-blocking)."""
        t = time.perf_counter()
        work = dist.isend(x.contiguous(), self.stage_rank(dst_stage))
        self.stats.seconds += time.perf_counter() - t
        return work

    def recv(self, x: torch.Tensor, src_stage: int) -> torch.Tensor:
        """Receive into ``x`` from the same tensor rank of stage ``src_stage`` (blocking)."""
        t = time.perf_counter()
        dist.recv(x, self.stage_rank(src_stage))
        self.stats.seconds += time.perf_counter() - t
        return x

    def close(self) -> None:
        """Release shared memory; the process group is the launcher's to destroy."""
        self.tp_comm.close()
        self.world_comm.close()


def require_one_process(engine: object, what: str) -> None:
    """Raise a clear error if ``engine`` spans several processes: ``what`` drives the runner
    or swaps engine parts directly, which only rank 0 would do (the ranks would leave
    lockstep)."""
    par = getattr(engine, "parallel", None)
    if par is not None and par.world_size > 1:
        raise ValueError(
            f"{what} runs on one process only; this engine has parallel.tp_size={par.tp_size} x "
            f"parallel.pp_size={par.pp_size} ranks: use parallel=single for it"
        )


def single() -> ParallelState:
    """The one-process state (``parallel=single``)."""
    return ParallelState()


def init_distributed(device: torch.device, timeout_s: float = 600.0) -> None:
    """Join the process group torchrun (or ``infer.parallel.executor``) described in the
    environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); no-op if already joined.
    gloo carries setup and CPU traffic; NCCL carries CUDA tensors."""
    if dist.is_initialized():
        return
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"parallel: a multi-process run needs {', '.join(missing)} in the environment; launch "
            "it with `torchrun --nproc-per-node N run.py parallel=...` or use LLM(parallel=...)"
        )
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))


def build_state(tp_size: int, pp_size: int, comm: str, device: torch.device) -> ParallelState:
    """Create the groups and communicators for a ``tp_size x pp_size`` grid (collective)."""
    if tp_size * pp_size == 1:
        return single()
    init_distributed(device)
    world = dist.get_world_size()
    if world != tp_size * pp_size:
        raise ValueError(
            f"parallel.tp_size={tp_size} x parallel.pp_size={pp_size} = {tp_size * pp_size} "
            f"processes, but {world} were launched (torchrun --nproc-per-node x --nnodes)"
        )
    rank = dist.get_rank()
    pp_rank, tp_rank = divmod(rank, tp_size)
    stats = CommStats()
    tp_comm: Communicator = SingleComm()
    for stage in range(pp_size):  # every rank creates every group, in the same order
        ranks = list(range(stage * tp_size, (stage + 1) * tp_size))
        group = dist.new_group(ranks) if tp_size > 1 else None
        if stage == pp_rank and group is not None:
            tp_comm = make_comm(comm, group, device)
    world_comm = make_comm(comm, None, device)
    return ParallelState(tp_rank, tp_size, pp_rank, pp_size, CountingComm(tp_comm, stats),
                         CountingComm(world_comm, stats), stats)

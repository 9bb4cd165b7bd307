"""ShmComm: all-reduce, broadcast, gather and barrier through shared memory on one node (CPU).

One segment in /dev/shm holds a control line and two data buffers per rank (layout and the
step protocol: csrc/shm_comm.c). Each rank writes its contribution into its own buffer, marks
its arrival with a release store of the step's sequence number, spin-waits (then yields) until
every rank has arrived, and reads the others' buffers. The fp32 all-reduce runs as one C call;
the other collectives copy with torch ops between the C synchronization points.

Setup is collective over a torch.distributed group that can run CPU collectives (gloo): rank 0
creates the segment and broadcasts its name, the others map it, and once every rank reports
success rank 0 unlinks the name. From then on nothing is left in /dev/shm even if a rank is
killed; the memory is freed when the last rank unmaps it (``close()`` or process exit).

Reduction order: every rank computes ``((x_0 + x_1) + x_2) + ...`` in rank order, element by
element, so all ranks hold bit-identical sums (equal to gloo's exactly for two ranks, where the
only order is commutative; for three or more, gloo's ring may associate differently).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import uuid
from pathlib import Path

import torch
import torch.distributed as dist

from infer.parallel.comm.base import check_gatherable, check_root
from infer.parallel.comm.shm_lib import ShmLibError, load_or_raise

LINE = 128  # bytes of control per rank; must match csrc/shm_comm.c
DEFAULT_CAPACITY = 2 << 20  # bytes per rank per buffer; larger messages go in several steps
DEFAULT_TIMEOUT_S = 300.0  # a rank waiting longer than this for a peer raises (dead peer)
_ALLREDUCE, _BROADCAST, _GATHER, _BARRIER = 1, 2, 3, 4
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
           torch.int16, torch.int8, torch.uint8, torch.bool)


class ShmUnavailable(RuntimeError):
    """Shared memory cannot connect this group (ranks on several nodes, no compiler, ...).
    Raised on every rank of the group alike, so callers can fall back together."""


class CommError(RuntimeError):
    """A collective failed (a peer timed out or called a different collective)."""


def node_id() -> str:
    """Host name and kernel boot id: equal only for processes on the same machine."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


class ShmComm:
    """Shared-memory collectives for the ranks of ``group`` (all on this node), CPU tensors.

    Args:
        group: a torch.distributed process group that runs CPU collectives (gloo); None = world.
            Used only during construction.
        capacity_bytes: per-rank buffer size (rounded up to 4 KiB); a message larger than this
            takes several synchronized steps.
        timeout_s: how long a rank waits for a peer before raising CommError.
        shm_dir: where the segment's name lives while the ranks attach (node-local tmpfs).
        prefix: file-name prefix of the segment (tests use their own to check cleanup).
    Raises:
        ShmUnavailable: on every rank, when any rank cannot take part.

    One communicator serves one thread at a time (its steps are numbered per process).
    """

    def __init__(
        self,
        group: dist.ProcessGroup | None = None,
        *,
        capacity_bytes: int = DEFAULT_CAPACITY,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        shm_dir: str = "/dev/shm",
        prefix: str = "infer_comm",
    ) -> None:
        if capacity_bytes < 1:
            raise ValueError(f"capacity_bytes={capacity_bytes}: allowed values are >= 1")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s}: allowed values are > 0")
        self.rank = dist.get_rank(group)
        if self.rank < 0:
            raise ValueError("ShmComm: this process is not a member of the given group")
        self.world_size = dist.get_world_size(group)
        self.timeout_s = float(timeout_s)
        self.cap = -(-int(capacity_bytes) // 4096) * 4096
        self._data_off = -(-self.world_size * LINE // 4096) * 4096
        self._seq = 0
        self._broken: str | None = None
        self._mem: torch.Tensor | None = None
        self._lib = None
        self._steps = ctypes.c_int64(0)  # out-parameter of the C all-reduce, reused per call
        self._steps_ref = ctypes.byref(self._steps)
        self._attach(group, shm_dir, prefix)
        assert self._mem is not None
        self._base = self._mem.data_ptr()
        # buffer views [rank][parity], uint8
        self._bufs = [
            [self._mem[self._buf_off(r, p): self._buf_off(r, p) + self.cap] for p in (0, 1)]
            for r in range(self.world_size)
        ]

    # ---- setup -------------------------------------------------------------------------
    def _buf_off(self, r: int, p: int) -> int:
        return self._data_off + (2 * r + p) * self.cap

    def _attach(self, group: dist.ProcessGroup | None, shm_dir: str, prefix: str) -> None:
        size = self._buf_off(self.world_size, 0)
        here = node_id()
        path, err = None, None
        if self.rank == 0:
            try:
                self._lib = load_or_raise()  # rank 0 builds; the others then find it cached
                if not os.path.isdir(shm_dir):
                    raise ShmUnavailable(f"no shared-memory folder {shm_dir}")
                path = os.path.join(shm_dir, f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:12]}")
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
                try:
                    os.ftruncate(fd, size)  # zero-filled: every seq starts at 0
                finally:
                    os.close(fd)
                self._mem = torch.from_file(path, shared=True, size=size, dtype=torch.uint8)
            except (ShmLibError, ShmUnavailable, OSError, RuntimeError) as e:
                err = f"rank 0: {e}"
        msg: list[object] = [path, err, here]
        try:
            dist.broadcast_object_list(msg, src=dist.get_global_rank(group or dist.group.WORLD, 0),
                                       group=group)
            path, err, node0 = msg
            if self.rank != 0 and err is None:
                try:
                    if node0 != here:
                        raise ShmUnavailable(f"on node {here}, rank 0 on {node0}")
                    self._lib = load_or_raise()
                    # MAP_SHARED mapping of the same file: stores are seen by every rank
                    self._mem = torch.from_file(str(path), shared=True, size=size,
                                                dtype=torch.uint8)
                except (ShmLibError, ShmUnavailable, OSError, RuntimeError) as e:
                    err = f"rank {self.rank}: {e}"
            errs: list[object] = [None] * self.world_size
            dist.all_gather_object(errs, err, group=group)
        finally:
            if self.rank == 0 and path is not None:
                # every rank has tried to map it (or setup failed); absent if creation failed
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(str(path))
        bad = [e for e in errs if e is not None]
        if bad:
            self._mem = None
            raise ShmUnavailable("shared-memory communicator unavailable: " + "; ".join(map(str, bad)))

    def close(self) -> None:
        """Unmap the segment (the memory is freed when the last rank has unmapped it)."""
        self._mem = None
        self._bufs = []
        self._broken = self._broken or "closed"

    # ---- synchronization -----------------------------------------------------------------
    def _check(self, x: torch.Tensor) -> None:
        if self._broken is not None:
            raise CommError(f"ShmComm rank {self.rank} is unusable: {self._broken}")
        if x.device.type != "cpu":
            raise ValueError(f"ShmComm works on CPU tensors, got device {x.device}")
        if x.dtype not in _DTYPES:
            raise ValueError(f"ShmComm: dtype {x.dtype} not supported; allowed: {_DTYPES}")

    def _fail(self, rc: int, what: str) -> None:
        """Turn a C return code into CommError; the sequence numbers are now out of step, so
        the communicator refuses any further use."""
        if rc > 0:
            self._broken = (f"{what}: rank {rc - 1} did not arrive within {self.timeout_s} s "
                            f"(step {self._seq})")
        else:
            self._broken = (f"{what}: rank {-rc - 1} called a different collective or size at "
                            f"step {self._seq} (all ranks must issue the same collectives)")
        raise CommError(f"ShmComm rank {self.rank}: {self._broken}")

    def _sync(self, kind: int, root: int, x: torch.Tensor | None, what: str) -> int:
        """One step: publish (after this rank's buffer writes), wait for all ranks.
        Returns the parity whose buffers now hold every rank's data for this step.

        Buffer writes done by torch (possibly on intra-op worker threads, which join the
        calling thread before copy_ returns) happen-before the C release store; reads after
        the C acquire loads see the peers' writes."""
        self._seq += 1
        w0, w1 = _desc(kind, root, x)
        rc = self._lib.shm_sync(self._base, self.rank, self.world_size, self._seq, w0, w1,
                                self.timeout_s)
        if rc != 0:
            self._fail(rc, what)
        return self._seq & 1

    # ---- collectives -----------------------------------------------------------------------
    def barrier(self) -> None:
        if self._broken is not None:
            raise CommError(f"ShmComm rank {self.rank} is unusable: {self._broken}")
        self._sync(_BARRIER, 0, None, "barrier")

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks in rank order (bit-identical on every rank)."""
        self._check(x)
        if self.world_size == 1 or x.numel() == 0:
            return x
        xc = x if x.is_contiguous() else x.contiguous()
        if xc.dtype == torch.float32:
            self._allreduce_f32(xc)
        else:
            self._allreduce_torch(xc)
        if xc is not x:
            x.copy_(xc)
        return x

    def _allreduce_f32(self, x: torch.Tensor) -> None:
        steps = self._steps
        w0, w1 = _desc(_ALLREDUCE, 0, x)
        rc = self._lib.shm_allreduce_f32(self._base, self._data_off, self.cap, self.rank,
                                         self.world_size, self._seq + 1, x.data_ptr(),
                                         x.numel(), w0, w1, self.timeout_s, self._steps_ref)
        self._seq += steps.value
        if rc != 0:
            self._fail(rc, "all_reduce_sum")

    def _allreduce_torch(self, x: torch.Tensor) -> None:
        flat, es = x.view(-1), x.element_size()
        per = self.cap // es
        for off in range(0, flat.numel(), per):
            m = min(per, flat.numel() - off)
            self._bufs[self.rank][(self._seq + 1) & 1][: m * es].view(x.dtype).copy_(flat[off:off + m])
            p = self._sync(_ALLREDUCE, 0, x, "all_reduce_sum")
            b = [self._bufs[r][p][: m * es].view(x.dtype) for r in range(self.world_size)]
            out = flat[off:off + m]
            torch.add(b[0], b[1], out=out)  # same order as the C path: ((b0 + b1) + b2) + ...
            for r in range(2, self.world_size):
                out.add_(b[r])

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        self._check(x)
        check_root("src", src, self.world_size)
        if self.world_size == 1 or x.numel() == 0:
            return x
        xc = x if x.is_contiguous() else x.contiguous()
        u8 = _bytes(xc)
        for off in range(0, u8.numel(), self.cap):
            m = min(self.cap, u8.numel() - off)
            if self.rank == src:
                self._bufs[src][(self._seq + 1) & 1][:m].copy_(u8[off:off + m])
            p = self._sync(_BROADCAST, src, x, "broadcast")
            if self.rank != src:
                u8[off:off + m].copy_(self._bufs[src][p][:m])
        if xc is not x:
            x.copy_(xc)
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        out = self._gather(x, None)
        assert out is not None
        return out

    def gather(self, x: torch.Tensor, dst: int = 0) -> torch.Tensor | None:
        check_root("dst", dst, self.world_size)
        return self._gather(x, dst)

    def _gather(self, x: torch.Tensor, dst: int | None) -> torch.Tensor | None:
        """Every rank publishes its bytes; all ranks (dst=None) or only ``dst`` copy them out."""
        self._check(x)
        check_gatherable(x)
        receive = dst is None or dst == self.rank
        out = x.new_empty((self.world_size * x.shape[0], *x.shape[1:])) if receive else None
        u8 = _bytes(x.contiguous())
        n = u8.numel()
        out_u8 = _bytes(out).view(self.world_size, n) if out is not None else None
        what = "all_gather" if dst is None else "gather"
        for off in range(0, n, self.cap):
            m = min(self.cap, n - off)
            self._bufs[self.rank][(self._seq + 1) & 1][:m].copy_(u8[off:off + m])
            p = self._sync(_GATHER, -1 if dst is None else dst, x, what)
            if out_u8 is not None:
                for r in range(self.world_size):
                    out_u8[r, off:off + m].copy_(self._bufs[r][p][:m])
        return out


def _bytes(x: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's storage as a flat uint8 view."""
    return x.reshape(-1).view(torch.uint8)


def _desc(kind: int, root: int, x: torch.Tensor | None) -> tuple[int, int]:
    """Descriptor compared across ranks at every step: (collective, dtype, root), total bytes."""
    dt = 0 if x is None else _DTYPES.index(x.dtype) + 1
    nbytes = 0 if x is None else x.numel() * x.element_size()
    return kind | (dt << 8) | ((root + 1) << 16), nbytes

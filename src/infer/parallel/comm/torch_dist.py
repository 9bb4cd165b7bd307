"""TorchDistComm: the Communicator over a torch.distributed process group (gloo, nccl, ...).

gloo runs CPU tensors (and is the reference the shared-memory path is tested against); nccl
runs CUDA tensors. Roots are group ranks; torch.distributed wants global ranks, so they are
translated here once per call.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from infer.parallel.comm.base import check_gatherable, check_root

# torch 2.13 renamed all_gather_into_tensor (older releases have only the old name)
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class TorchDistComm:
    """Collectives of ``group`` (None = the default world group) through torch.distributed."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        if not dist.is_initialized():
            raise RuntimeError("TorchDistComm needs torch.distributed.init_process_group first")
        self.group = group if group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        self.world_size = dist.get_world_size(self.group)
        self.backend = str(dist.get_backend(self.group))

    def _global(self, r: int) -> int:
        return dist.get_global_rank(self.group, r)

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        xc = x if x.is_contiguous() else x.contiguous()  # backends need dense tensors
        dist.all_reduce(xc, op=dist.ReduceOp.SUM, group=self.group)
        if xc is not x:
            x.copy_(xc)
        return x

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        check_root("src", src, self.world_size)
        xc = x if x.is_contiguous() else x.contiguous()
        dist.broadcast(xc, src=self._global(src), group=self.group)
        if xc is not x:
            x.copy_(xc)
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        check_gatherable(x)
        out = x.new_empty((self.world_size * x.shape[0], *x.shape[1:]))
        _all_gather_single(out, x.contiguous(), group=self.group)
        return out

    def gather(self, x: torch.Tensor, dst: int = 0) -> torch.Tensor | None:
        check_root("dst", dst, self.world_size)
        check_gatherable(x)
        xc = x.contiguous()
        parts = [torch.empty_like(xc) for _ in range(self.world_size)] if self.rank == dst else None
        dist.gather(xc, gather_list=parts, dst=self._global(dst), group=self.group)
        return torch.cat(parts) if parts is not None else None

    def barrier(self) -> None:
        dist.barrier(group=self.group)

    def close(self) -> None:
        """The process group belongs to the caller (destroy_process_group); nothing to free."""
        return

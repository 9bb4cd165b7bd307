"""The Communicator protocol: the collectives tensor/pipeline layers need, per process group.

Contract shared by every implementation (the same as torch.distributed's): every rank of the
group calls the same collectives in the same order with tensors of the same shape and dtype.
Ranks are group ranks (0 .. world_size - 1), not global ranks.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Communicator(Protocol):
    """Collectives over one group of ``world_size`` processes; this process is ``rank``."""

    rank: int
    world_size: int

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` (any shape, floating dtype) over the ranks, in place; returns ``x``.

        Every rank ends with bit-identical values."""
        ...

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Overwrite ``x`` on every rank with rank ``src``'s ``x``, in place; returns ``x``."""
        ...

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``x [d0, ...]`` along dim 0 in rank order:
        a new tensor ``[world_size * d0, ...]`` on every rank."""
        ...

    def gather(self, x: torch.Tensor, dst: int = 0) -> torch.Tensor | None:
        """Like ``all_gather``, but only rank ``dst`` receives ``[world_size * d0, ...]``;
        the other ranks get None."""
        ...

    def barrier(self) -> None:
        """Return only after every rank has entered the barrier."""
        ...

    def close(self) -> None:
        """Release the resources (shared memory, ...); later calls are errors. Idempotent."""
        ...


class SingleComm:
    """The one-process group: every collective is the identity (``parallel=single``)."""

    rank = 0
    world_size = 1

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        check_root("src", src, 1)
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        check_gatherable(x)
        return x.clone()

    def gather(self, x: torch.Tensor, dst: int = 0) -> torch.Tensor | None:
        check_root("dst", dst, 1)
        check_gatherable(x)
        return x.clone()

    def barrier(self) -> None:
        return None

    def close(self) -> None:
        return None


def check_root(name: str, value: int, world_size: int) -> None:
    """Bad root ranks are errors naming the argument and the allowed range."""
    if not (isinstance(value, int) and 0 <= value < world_size):
        raise ValueError(f"{name}={value!r}: allowed values are group ranks 0..{world_size - 1}")


def check_gatherable(x: torch.Tensor) -> None:
    """all_gather/gather concatenate along dim 0, so ``x`` needs one."""
    if x.dim() == 0:
        raise ValueError("all_gather/gather need a tensor with at least one dimension (dim 0)")

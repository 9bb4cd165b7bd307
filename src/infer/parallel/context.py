"""ParallelContext: which tensor/pipeline rank this process is, passed explicitly to layers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParallelContext:
    """Ranks and sizes of this process in the tensor- and pipeline-parallel groups.

    The single-process case is ``ParallelContext()`` (tp_size=pp_size=1). Layers read
    ``tp_rank``/``tp_size`` to shard their parameters; process groups are attached by the
    distributed strategies (not needed for one process).
    """

    tp_rank: int = 0
    tp_size: int = 1
    pp_rank: int = 0
    pp_size: int = 1

    def __post_init__(self) -> None:
        if self.tp_size < 1 or self.pp_size < 1:
            raise ValueError(f"tp_size and pp_size must be >= 1, got {self.tp_size}, {self.pp_size}")
        if not (0 <= self.tp_rank < self.tp_size and 0 <= self.pp_rank < self.pp_size):
            raise ValueError(f"rank out of range: {self}")


def single() -> ParallelContext:
    """The one-process context (``parallel=single``)."""
    return ParallelContext()

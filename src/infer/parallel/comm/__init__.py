"""Communicators: the collectives tensor/pipeline parallel layers use (parallel.comm).

``Communicator`` is the protocol; ``SingleComm`` (one process), ``TorchDistComm`` (gloo/nccl
through torch.distributed) and ``ShmComm`` (shared memory between the CPU ranks of one node)
implement it; ``make_comm`` picks one from the ``parallel.comm`` setting.
"""

from infer.parallel.comm.base import Communicator, SingleComm
from infer.parallel.comm.factory import COMM_KINDS, make_comm
from infer.parallel.comm.shm import CommError, ShmComm, ShmUnavailable
from infer.parallel.comm.torch_dist import TorchDistComm

__all__ = ["COMM_KINDS", "CommError", "Communicator", "ShmComm", "ShmUnavailable", "SingleComm",
           "TorchDistComm", "make_comm"]

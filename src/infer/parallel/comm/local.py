"""Start a group of local processes for tests and benchmarks (gloo over 127.0.0.1).

``run_local(fn, world, *args)`` spawns ``world`` processes, initializes a gloo process group
among them on a free TCP port, calls ``fn(rank, world, *args)`` in each (one torch thread each,
so ranks do not oversubscribe the cores), and re-raises a rank's exception in the caller.
``fn`` must be importable by name (a module-level function).
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, fn: Callable[..., Any], world: int, port: int, backend: str,
           timeout_s: float, args: tuple[Any, ...]) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=timeout_s))
    try:
        fn(rank, world, *args)
    except BaseException:
        # the caller re-raises only the first rank to exit, often a peer of the one that
        # failed (its collective broke off); every rank's own error goes to stderr
        print(f"rank {rank} of {world} failed:\n{traceback.format_exc()}", file=sys.stderr,
              flush=True)
        raise
    finally:
        dist.destroy_process_group()


def run_local(fn: Callable[..., Any], world: int, *args: Any, backend: str = "gloo",
              timeout_s: float = 120.0) -> None:
    """Run ``fn(rank, world, *args)`` on ``world`` fresh processes; raises if any rank fails."""
    mp.spawn(_entry, args=(fn, world, free_port(), backend, timeout_s, args), nprocs=world,
             join=True)

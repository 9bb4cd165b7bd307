"""run.py under a multi-process launcher: torchrun (one node or several), SLURM, submitit.

``spmd_engine(cfg, build)`` builds this rank's engine. Rank 0 gets a ``DriverEngine`` and runs
the task; ranks > 0 replay rank 0's calls inside it and get None (they run no task and write
nothing). On leaving, rank 0 sends "stop" and every rank destroys the process group.

SLURM tasks (and submitit's local tasks) do not carry torch.distributed's variables;
``launcher_env`` derives them: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE from the task
ids, MASTER_ADDR from the job's first node, MASTER_PORT from the job id (every task computes
the same one without talking to the others). Variables already set win.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch.distributed as dist
from omegaconf import DictConfig

PORT_BASE, PORT_SPAN = 20000, 20000  # MASTER_PORT = PORT_BASE + job id % PORT_SPAN


def first_node(nodelist: str) -> str | None:
    """First host of a SLURM node list ("n1,n2", "gpu[03-05,9]", "a-[1,4]-x,b1"); None if the
    form is not one of these."""
    m = re.match(r"^([^,\[\]]*)(?:\[([^\]]+)\]([^,]*))?(?:,|$)", nodelist.strip())
    if m is None or not m.group(1):  # a host name starts with its prefix
        return None
    prefix, ranges, suffix = m.group(1), m.group(2), m.group(3) or ""
    if ranges is None:
        return prefix
    first = re.match(r"^(\d+)", ranges)
    return None if first is None else f"{prefix}{first.group(1)}{suffix}"


def _per_node(tasks_per_node: str | None, ntasks: int, nnodes: int) -> int:
    """Tasks on this node: SLURM_NTASKS_PER_NODE / SLURM_TASKS_PER_NODE ("4" or "4(x2),3")."""
    if tasks_per_node:
        m = re.match(r"^(\d+)", tasks_per_node)
        if m:
            return int(m.group(1))
    return max(1, ntasks // max(1, nnodes))


def launcher_env(env: Mapping[str, str]) -> dict[str, str]:
    """torch.distributed variables for a task of a SLURM or submitit-local job with several
    tasks, omitting those ``env`` already has; {} when torchrun set RANK or one task runs."""
    if "RANK" in env:
        return {}
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        ntasks = int(env["SLURM_NTASKS"])
        nnodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
        master = first_node(env.get("SLURM_JOB_NODELIST", "")) or env.get("SLURM_LAUNCH_NODE_IPADDR")
        if master is None:
            raise RuntimeError("parallel: cannot tell the first node of this SLURM job "
                               f"(SLURM_JOB_NODELIST={env.get('SLURM_JOB_NODELIST')!r}); "
                               "set MASTER_ADDR")
        out = {"RANK": env["SLURM_PROCID"], "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
               "LOCAL_WORLD_SIZE": str(_per_node(env.get("SLURM_NTASKS_PER_NODE")
                                                 or env.get("SLURM_TASKS_PER_NODE"), ntasks, nnodes)),
               "MASTER_ADDR": master, "job": env.get("SLURM_JOB_ID", "0")}
    elif "SUBMITIT_LOCAL_GLOBALID" in env and "SUBMITIT_LOCAL_NTASKS" in env:
        ntasks = int(env["SUBMITIT_LOCAL_NTASKS"])
        out = {"RANK": env["SUBMITIT_LOCAL_GLOBALID"],
               "LOCAL_RANK": env.get("SUBMITIT_LOCAL_LOCALID", env["SUBMITIT_LOCAL_GLOBALID"]),
               "LOCAL_WORLD_SIZE": str(ntasks), "MASTER_ADDR": "127.0.0.1",
               "job": env.get("SUBMITIT_LOCAL_JOB_ID", "0")}
    else:
        return {}
    if ntasks <= 1:
        return {}
    job = out.pop("job")
    digits = re.sub(r"\D", "", job) or "0"
    out.update(WORLD_SIZE=str(ntasks), MASTER_PORT=str(PORT_BASE + int(digits) % PORT_SPAN))
    return {k: v for k, v in out.items() if k not in env}


def rank() -> int:
    """This process's global rank from the environment (0 when not launched)."""
    return int(os.environ.get("RANK", "0"))


def quiet_worker_overrides() -> list[str]:
    """Hydra overrides for ranks > 0 of run.py: no run folder of their own, no config record
    (rank 0 writes the run's folder; one ``${now:...}`` folder per run)."""
    env = {**os.environ, **launcher_env(os.environ)}
    if int(env.get("RANK", "0")) == 0:
        return []
    return ["hydra.output_subdir=null", "hydra.run.dir=."]


@contextmanager
def spmd_engine(cfg: DictConfig, build: Callable[[DictConfig], Any]) -> Iterator[Any]:
    """This rank's engine for run.py: the Engine (one process), rank 0's DriverEngine, or
    None on ranks > 0 after they replayed rank 0's calls to the end."""
    os.environ.update(launcher_env(os.environ))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    engine = build(cfg)
    size = engine.parallel.world_size
    if size == 1:
        if world > 1:
            raise ValueError(f"{world} processes were launched but parallel.tp_size x "
                             f"parallel.pp_size = 1; pass parallel=tp parallel.tp_size={world} "
                             "(or launch one process)")
        yield engine
        return
    from infer.parallel.driver import DriverEngine, control_group, worker_loop

    group = control_group()
    try:
        if dist.get_rank() > 0:
            worker_loop(engine, group)
            yield None
            return
        driver = DriverEngine(engine, group)
        try:
            yield driver
        finally:
            driver.stop()
    finally:
        engine.parallel.close()
        dist.destroy_process_group()

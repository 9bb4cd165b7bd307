"""In-process launch for notebooks: ``LLM(parallel="tp", tp_size=2)`` starts its own workers.

The calling process becomes rank 0 (the driver); ``world - 1`` worker processes are started
with the multiprocessing "spawn" context, each joins the process group on 127.0.0.1, builds
the engine from the same composed config and replays rank 0's calls (``worker_loop``).
``LocalExecutor.shutdown`` (also run by ``LLM.shutdown``, ``del llm`` and interpreter exit)
sends "stop", joins the workers, terminates any that do not leave, and destroys the group.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import traceback
import weakref
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from infer.parallel.comm.local import free_port

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
JOIN_TIMEOUT_S = 30.0  # how long shutdown waits for a worker to leave before terminating it
_OWNERS: list[weakref.finalize] = []  # shutdowns of this process's executors (alive = running)


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    """The torch.distributed environment of local rank ``rank`` of a one-node group."""
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def _worker_main(cfg_yaml: str, rank: int, world: int, port: int) -> None:
    """Entry point of one spawned worker: join, build, replay until "stop", leave."""
    os.environ.update(rank_env(rank, world, port))
    try:
        from infer.build import build
        from infer.parallel.driver import control_group, worker_loop

        engine = build(OmegaConf.create(cfg_yaml))
        try:
            worker_loop(engine, control_group())
        finally:
            engine.parallel.close()
    except BaseException:  # noqa: BLE001 (any failure: print it, exit non-zero for the driver)
        print(f"parallel worker rank {rank} of {world} failed:\n{traceback.format_exc()}",
              file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class LocalExecutor:
    """Worker processes of a one-node multi-process engine, started from rank 0's process.

    ``start(cfg, world)`` spawns ranks 1..world-1 and sets rank 0's environment; the caller
    then builds its own engine (which joins the group). ``check()`` raises if a worker is gone.
    """

    def __init__(self, cfg: DictConfig, world: int) -> None:
        self.world = world
        self.port = free_port()
        ctx = mp.get_context("spawn")
        text = OmegaConf.to_yaml(cfg)
        self.procs = [ctx.Process(target=_worker_main, args=(text, r, world, self.port),
                                  name=f"infer-worker-{r}", daemon=True)
                      for r in range(1, world)]
        self._saved_env = {k: os.environ.get(k) for k in ENV_KEYS}
        for p in self.procs:
            p.start()
        os.environ.update(rank_env(0, world, self.port))
        self._stop_box: list[Callable[[bool], None]] = []  # the driver's stop, once it exists
        # the finalizer holds only what it needs (never self), so `del` of the owner runs it
        self._finalizer = weakref.finalize(self, _shutdown, self.procs, self._saved_env,
                                           self._stop_box)
        self._finalizer.atexit = True
        _OWNERS.append(self._finalizer)

    def attach(self, stop: Callable[[bool], None]) -> None:
        """Register ``stop(send)``: sends "stop" to the workers when ``send`` (all alive) and
        releases rank 0's communicators; run once at shutdown. It must not reference the owner."""
        self._stop_box.append(stop)

    def health(self) -> Callable[[], None]:
        """A check that raises RuntimeError naming a worker that exited (not bound to self)."""
        procs, world = self.procs, self.world

        def check() -> None:
            for r, p in enumerate(procs, start=1):
                if not p.is_alive():
                    raise RuntimeError(
                        f"parallel: worker rank {r} of {world} exited (code {p.exitcode}); its "
                        "error is printed above. Call llm.shutdown() and build a new LLM")
        return check

    def shutdown(self) -> None:
        """Stop and join the workers, leave the process group (idempotent)."""
        self._finalizer()

    @property
    def alive(self) -> bool:
        return self._finalizer.alive


def _shutdown(procs: list[Any], saved_env: dict[str, str | None], stop_box: list[Any]) -> None:
    """Send "stop" if every worker still runs (to a dead one the send could hang), join them,
    terminate (then kill) stragglers,
    destroy rank 0's process group and restore its environment."""
    if stop_box:
        try:
            stop_box[0](all(p.is_alive() for p in procs))
        except Exception as e:  # noqa: BLE001 (a broken group: the workers are terminated below)
            print(f"parallel: could not send stop to the workers: {e}", file=sys.stderr)
    for p in procs:
        p.join(JOIN_TIMEOUT_S if stop_box else 0.1)
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(5.0)
        if p.is_alive():
            p.kill()
            p.join(5.0)
    if dist.is_initialized():
        dist.destroy_process_group()
    for k, v in saved_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def world_of(cfg: DictConfig) -> int:
    """Processes the config asks for (``parallel.tp_size * parallel.pp_size``)."""
    return int(cfg.parallel.get("tp_size") or 1) * int(cfg.parallel.get("pp_size") or 1)


def start_engine(cfg: DictConfig, build: Callable[[DictConfig], Any]) -> tuple[Any, LocalExecutor | None]:
    """Build the engine of ``cfg``; if it needs several processes and none were launched for
    it (no RANK in the environment), spawn the workers first and return rank 0's
    ``DriverEngine`` with the executor that owns them. Otherwise ``(build(cfg), None)``."""
    world = world_of(cfg)
    _OWNERS[:] = [f for f in _OWNERS if f.alive]
    if world > 1 and _OWNERS:
        # the process group is per process: a second group cannot be joined beside the first
        raise RuntimeError("parallel: this process already drives a multi-process LLM; call "
                           "its shutdown() (or del it) before building another")
    if world == 1 or "RANK" in os.environ or dist.is_initialized():
        return build(cfg), None  # one process, or every rank already runs this code (SPMD)
    from infer.parallel.driver import DriverEngine, control_group

    ex = LocalExecutor(cfg, world)
    try:
        engine = build(cfg)
        driver = DriverEngine(engine, control_group(), ex.health())
    except BaseException:
        ex.shutdown()
        raise

    def stop(send: bool) -> None:
        try:
            if send:
                driver.stop()
        finally:
            driver.engine.parallel.close()

    ex.attach(stop)
    return driver, ex

"""Driver and workers of a multi-process engine: rank 0 takes the calls, the others replay them.

Every rank holds the same Engine and must make the same state-changing calls in the same
order (their schedulers then pick the same batches, and the runner's collectives line up).
Only rank 0 runs the task, the server or the notebook; it holds a ``DriverEngine``:

* ``add_request`` and ``abort`` run on rank 0 first; a call that raises there (a bad prompt,
  a duplicate id) changes nothing and is not sent. A successful one is queued for the
  workers with the request id rank 0 used, so ids (and the sequence ids under them) match.
* ``step`` sends the queued calls plus "step" in one message, then steps rank 0 (the step's
  collectives need every rank inside it, so the message must go first).
* Reads (``stats``, ``has_unfinished``, ``validate_*``, ``tokenizer``, ...) stay local.

Messages travel by ``broadcast_object_list`` over a gloo group of their own, made with a long
timeout: an idle notebook or server may send nothing for hours. The ranks are our own
processes, so unpickling what rank 0 sent is trusted.
"""

from __future__ import annotations

import itertools
import sys
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from infer.engine import Engine
from infer.outputs import RequestOutput
from infer.sampling_params import SamplingParams

CONTROL_TIMEOUT = timedelta(days=30)  # a worker may wait this long for rank 0's next call
Command = tuple[str, tuple[Any, ...]]  # ("add_request" | "abort" | "step" | "stop", args)


def control_group() -> dist.ProcessGroup:
    """The gloo group that carries calls from rank 0 (collective: every rank calls it once,
    right after ``build``)."""
    return dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)


class DriverEngine:
    """Rank 0's engine: the Engine's interface, with every state change mirrored on the workers.

    Args:
        engine: rank 0's built Engine.
        group: the control group from ``control_group()``.
        health: called before every message; raises if a worker is known to be gone
            (the in-process executor checks its child processes), so a dead worker gives a
            clear error instead of a collective that waits for it.
    Attributes not defined here (stats, tokenizer, scheduler, ...) are rank 0's own.
    """

    def __init__(self, engine: Engine, group: dist.ProcessGroup,
                 health: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.group = group
        self.health = health
        self._pending: list[Command] = []
        self._rids = itertools.count()
        self.stopped = False

    def __getattr__(self, name: str) -> Any:
        # only reached for names this class lacks: reads go to the local engine
        return getattr(self.__dict__["engine"], name)

    def _send(self, cmds: list[Command]) -> None:
        if self.stopped:
            raise RuntimeError("parallel: the workers were stopped; build a new engine")
        if self.health is not None:
            self.health()
        dist.broadcast_object_list([cmds], src=0, group=self.group)

    def add_request(self, prompt: str | None, prompt_token_ids: list[int], params: SamplingParams,
                    request_id: str | None = None) -> str:
        """As ``Engine.add_request``; the id rank 0 chose is the one the workers use."""
        if request_id is None:
            request_id = f"req-{next(self._rids)}"
            while request_id in self.engine._requests:  # a caller used this name already
                request_id = f"req-{next(self._rids)}"
        rid = self.engine.add_request(prompt, prompt_token_ids, params, request_id)
        self._pending.append(("add_request", (prompt, list(prompt_token_ids), params, rid)))
        return rid

    def abort(self, request_id: str) -> RequestOutput | None:
        """As ``Engine.abort``; sent only if rank 0 knew the request."""
        out = self.engine.abort(request_id)
        if out is not None:
            self._pending.append(("abort", (request_id,)))
        return out

    def step(self) -> list[RequestOutput]:
        """Send the queued calls and a step to the workers, then step rank 0."""
        cmds, self._pending = self._pending + [("step", ())], []
        self._send(cmds)
        return self.engine.step()

    def stop(self) -> None:
        """Tell the workers to leave ``worker_loop`` (idempotent; queued calls are dropped)."""
        if self.stopped:
            return
        self._pending = []
        try:
            self._send([("stop", ())])
        finally:
            self.stopped = True


def apply(engine: Engine, cmd: Command) -> bool:
    """Replay one call on a worker's engine; False for "stop"."""
    name, args = cmd
    if name == "stop":
        return False
    if name == "add_request":
        engine.add_request(*args)
    elif name == "abort":
        engine.abort(*args)
    elif name == "step":
        engine.step()
    else:
        raise ValueError(f"parallel: unknown driver command {name!r}")
    return True


def worker_loop(engine: Engine, group: dist.ProcessGroup) -> None:
    """Ranks > 0: replay rank 0's calls until it sends "stop". A replay that raises means this
    rank left lockstep: the error is printed and re-raised (the launcher then stops the job)."""
    while True:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=group)
        for cmd in box[0]:
            try:
                if not apply(engine, cmd):
                    return
            except Exception:
                print(f"parallel worker rank {dist.get_rank()}: replaying {cmd[0]} failed:\n"
                      f"{traceback.format_exc()}", file=sys.stderr, flush=True)
                raise

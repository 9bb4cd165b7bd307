"""One background thread owns the engine; HTTP handlers talk to it through a command queue.

The engine is single-threaded, so everything that touches it (admission, ``step``, abort, the
tokenizer) runs on this thread. A handler submits a ``build`` callable (run here: tokenize,
make SamplingParams) and a ``sink`` (called here with every step's output for its request,
plus whatever the request's ``render`` made of it: text deltas, logprob entries).
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from infer.outputs import CompletionOutput, RequestOutput
from infer.sampling_params import SamplingParams

log = logging.getLogger(__name__)


@dataclass
class NewRequest:
    """What ``build`` returns: the request to add, and how to render its outputs."""

    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    render: Callable[[RequestOutput], Any] | None = None


@dataclass
class Event:
    """One step's output for one request, plus its rendering (both made on the engine thread)."""

    output: RequestOutput
    payload: Any = None


@dataclass
class _Live:
    sink: Callable[[Event], None]
    render: Callable[[RequestOutput], Any] | None
    n: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def _final(rid: str, prompt_ids: list[int], n: int, reason: str, error: str | None) -> RequestOutput:
    """A terminal output for a request the engine no longer reports on."""
    outs = [CompletionOutput(i, "", [], None, None, reason) for i in range(n)]
    return RequestOutput(rid, None, prompt_ids, None, outs, True, error)


class EngineLoop:
    """Runs ``engine.step()`` whenever there is work; executes submitted commands between steps.

    Args:
        engine: the Engine (see infer.engine) this thread will own from ``start()`` on.
        on_step: called on the engine thread after every step (metrics).
        on_finish: called on the engine thread with every request's final output.
        idle_wait_s: how long the idle thread sleeps before re-checking (commands wake it).
    """

    def __init__(self, engine: Any, on_step: Callable[[Any], None] | None = None,
                 on_finish: Callable[[RequestOutput], None] | None = None,
                 idle_wait_s: float = 0.5) -> None:
        self.engine = engine
        self._on_step = on_step
        self._on_finish = on_finish
        self._idle = idle_wait_s
        self._cmds: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._live: dict[str, _Live] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counter = 0
        self.error: BaseException | None = None  # set if the loop itself died

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="infer-engine", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Abort every request still in flight (their sinks get finish_reason="abort"), stop
        the thread and wait for it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- commands (any thread) ------------------------------------------------------------
    def call(self, fn: Callable[[Any], Any]) -> Future:
        """Run ``fn(engine)`` on the engine thread; the future gets its result or exception."""
        fut: Future = Future()

        def cmd() -> None:
            try:
                fut.set_result(fn(self.engine))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)

        self._put(cmd)
        return fut

    def submit(self, build: Callable[[Any], NewRequest], sink: Callable[[Event], None]) -> Future:
        """Admit a request built on the engine thread. The future gets ``(request_id,
        prompt_token_ids)``, or the exception ``build``/``add_request`` raised (nothing was
        added then). ``sink`` then receives one Event per step that advanced the request;
        the last has ``output.finished``."""

        def add(engine: Any) -> tuple[str, list[int]]:
            req = build(engine)
            self._counter += 1
            rid = f"srv-{self._counter}"
            engine.add_request(req.prompt, req.prompt_token_ids, req.params, request_id=rid)
            self._live[rid] = _Live(sink, req.render, req.params.n, {"ids": req.prompt_token_ids})
            return rid, req.prompt_token_ids

        return self.call(add)

    def abort(self, request_id: str) -> None:
        """Abort a request (client gone): frees its KV; its sink hears nothing more."""

        def cmd() -> None:
            live = self._live.pop(request_id, None)
            if live is None:
                return
            out = self.engine.abort(request_id)
            if self._on_finish is not None:
                self._on_finish(out if out is not None else
                                _final(request_id, live.extra["ids"], live.n, "abort", None))

        self._put(cmd)

    def _put(self, cmd: Callable[[], None]) -> None:
        if self._stop.is_set() or (self._thread is not None and not self._thread.is_alive()):
            raise RuntimeError("the engine loop is not running")
        self._cmds.put(cmd)
        self._wake.set()

    # ---- the thread ----------------------------------------------------------------------
    def _drain(self) -> None:
        while True:
            try:
                cmd = self._cmds.get_nowait()
            except queue.Empty:
                return
            cmd()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._drain()
                if not self.engine.has_unfinished():
                    self._wake.wait(self._idle)
                    self._wake.clear()
                    continue
                self._step()
        except BaseException as e:  # noqa: BLE001 - recorded; /health reports it
            self.error = e
            log.error("engine loop died:\n%s", traceback.format_exc())
        finally:
            try:  # commands queued before the stop still get an answer (then an abort)
                self._drain()
            except Exception:  # noqa: BLE001
                log.error("draining commands failed:\n%s", traceback.format_exc())
            self._fail_all("abort", "server shutting down" if self.error is None else repr(self.error))

    def _step(self) -> None:
        try:
            outs = self.engine.step()
        except Exception as e:  # noqa: BLE001 - a failed step fails its requests, not the server
            log.error("engine step failed:\n%s", traceback.format_exc())
            self._fail_all("error", f"engine step failed: {e!r}")
            return
        if self._on_step is not None:
            self._on_step(self.engine)
        for out in outs:
            self._dispatch(out)

    def _dispatch(self, out: RequestOutput) -> None:
        live = self._live.get(out.request_id)
        if live is None:
            return  # aborted by its client meanwhile
        try:
            payload = live.render(out) if live.render is not None else None
        except Exception as e:  # noqa: BLE001 - a rendering bug fails this request alone
            log.error("rendering %s failed:\n%s", out.request_id, traceback.format_exc())
            self._live.pop(out.request_id, None)
            self.engine.abort(out.request_id)
            err = _final(out.request_id, out.prompt_token_ids, live.n, "error", repr(e))
            self._deliver(live, Event(err))
            return
        if out.finished:
            self._live.pop(out.request_id, None)
            if self._on_finish is not None:
                self._on_finish(out)
        self._deliver(live, Event(out, payload))

    def _deliver(self, live: _Live, ev: Event) -> None:
        try:
            live.sink(ev)
        except Exception:  # noqa: BLE001 - the handler's loop is gone; nothing to tell
            if not ev.output.finished:
                self._live.pop(ev.output.request_id, None)
                self.engine.abort(ev.output.request_id)

    def _fail_all(self, reason: str, error: str) -> None:
        """End every live request: abort it in the engine and tell its sink."""
        for rid, live in list(self._live.items()):
            self._live.pop(rid, None)
            try:
                self.engine.abort(rid)
            except Exception:  # noqa: BLE001 - the engine may be in a bad state already
                log.error("abort of %s failed:\n%s", rid, traceback.format_exc())
            out = _final(rid, live.extra["ids"], live.n, reason, error)
            if self._on_finish is not None:
                self._on_finish(out)
            self._deliver(live, Event(out))

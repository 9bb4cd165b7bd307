"""The asyncio side of one HTTP request: its engine requests (one per prompt) and their events.

Engine-thread sinks hop onto the handler's event loop with ``call_soon_threadsafe``; the
handler iterates the events, and aborts whatever is unfinished when it stops listening
(client gone, error, shutdown), which frees those requests' KV.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from infer.serve.engine_loop import EngineLoop, Event, NewRequest
from infer.serve.protocol import APIError, param_of


class RequestGroup:
    """Submit several engine requests for one HTTP request and iterate their events."""

    def __init__(self, loop: EngineLoop, disconnected: Callable[[], Any] | None = None,
                 poll_s: float = 1.0) -> None:
        self.loop = loop
        self._aio = asyncio.get_running_loop()
        self._q: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self._disconnected = disconnected
        self._poll = poll_s
        self.request_ids: list[str] = []
        self.prompt_ids: list[list[int]] = []
        self._finished: set[int] = set()

    async def submit(self, builds: list[Callable[[Any], NewRequest]], param: str) -> None:
        """Admit every build; if any is refused, abort the admitted ones and raise APIError(400)
        naming the field (``param`` when the engine's message names none)."""
        futs = [self.loop.submit(b, self._sink(i)) for i, b in enumerate(builds)]
        results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futs), return_exceptions=True)
        err = next((r for r in results if isinstance(r, BaseException)), None)
        for r in results:
            if not isinstance(r, BaseException):
                self.request_ids.append(r[0])
                self.prompt_ids.append(r[1])
        if err is not None:
            self.abort_unfinished()
            if isinstance(err, APIError):
                raise err
            if isinstance(err, ValueError):
                raise APIError(str(err).replace("SamplingParams.", ""), param=param_of(err, param)) from err
            raise err

    def _sink(self, idx: int) -> Callable[[Event], None]:
        def put(ev: Event) -> None:
            self._aio.call_soon_threadsafe(self._q.put_nowait, (idx, ev))
        return put

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        """Yield ``(prompt_index, event)`` until every request finished. Polls the client
        connection while waiting (non-streaming responses write nothing until the end)."""
        while len(self._finished) < len(self.request_ids):
            try:
                idx, ev = await asyncio.wait_for(self._q.get(), self._poll)
            except asyncio.TimeoutError:
                if self._disconnected is not None and await self._disconnected():
                    return
                continue
            if ev.output.finished:
                self._finished.add(idx)
            yield idx, ev

    def abort_unfinished(self) -> None:
        for i, rid in enumerate(self.request_ids):
            if i not in self._finished:
                self._finished.add(i)
                try:
                    self.loop.abort(rid)
                except RuntimeError:
                    pass  # the loop is gone: it aborted everything itself

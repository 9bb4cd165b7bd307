"""Helpers for the server tests: a live server on a free loopback port."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(engine: Any, model_name: str = "test-model", api_key: str | None = None) -> Iterator[Any]:
    """Serve ``engine`` on 127.0.0.1 in a background thread; yields the uvicorn Server
    (``.config.port``, ``.config.app.state.engine_loop``); stops it on exit."""
    from infer.serve.server import make_server, start_in_thread

    server = make_server(engine, model_name, port=free_port(), api_key=api_key, log_level="warning",
                         graceful_s=5)
    thread = start_in_thread(server)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(30)


def base_url(server: Any) -> str:
    return f"http://127.0.0.1:{server.config.port}/v1"


def engine_call(server: Any, fn: Callable[[Any], Any]) -> Any:
    """Run ``fn(engine)`` on the server's engine thread (the only safe place) and return it."""
    return server.config.app.state.engine_loop.call(fn).result(timeout=30)

"""Run the app under uvicorn: SIGINT/SIGTERM stop accepting, let open requests finish (up to
``graceful_s``), then the lifespan aborts what is left and stops the engine loop."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import uvicorn

from infer.serve.app import create_app


def make_server(engine: Any, model_name: str, host: str = "127.0.0.1", port: int = 8000,
                api_key: str | None = None, log_level: str = "info",
                graceful_s: float = 10.0) -> uvicorn.Server:
    """A uvicorn Server around ``create_app(engine, ...)`` (not started)."""
    app = create_app(engine, model_name, api_key=api_key)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=graceful_s, access_log=False)
    return uvicorn.Server(config)


def serve_forever(server: uvicorn.Server) -> list[int]:
    """Block until SIGINT/SIGTERM, then shut down gracefully and return the signals seen.

    uvicorn re-raises a captured signal once it has shut down; the handlers installed here
    (restored by uvicorn in place of the defaults) just note it, so the caller returns
    normally and can still write its metrics."""
    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        server.run()
        return seen
    sigs = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda sig, frame: seen.append(sig)) for s in sigs}
    try:
        server.run()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return seen


def start_in_thread(server: uvicorn.Server, timeout: float = 30.0) -> threading.Thread:
    """Start ``server`` on a background thread and wait until it accepts connections
    (tests, notebooks). Stop it with ``server.should_exit = True; thread.join()``."""
    t = threading.Thread(target=server.run, name="infer-uvicorn", daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    while t.is_alive() and not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError("the server did not start (port in use?)")
    return t

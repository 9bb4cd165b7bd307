"""``task=serve``: serve the configured engine under the OpenAI API until SIGINT/SIGTERM."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from infer.engine import Engine


def run(engine: Engine, cfg: DictConfig) -> dict[str, Any]:
    """Block serving ``engine`` on ``task.host:task.port``; return totals at shutdown."""
    from infer.serve.server import make_server, serve_forever

    t = cfg.task
    name = t.model_name or cfg.model.name
    server = make_server(engine, str(name), host=str(t.host), port=int(t.port),
                         api_key=t.api_key or None, log_level=str(t.log_level),
                         graceful_s=float(t.graceful_shutdown_s))
    print(f"serving {name} on http://{t.host}:{t.port}/v1 (Ctrl-C to stop)", flush=True)
    serve_forever(server)
    return {"task": "serve", "prompt_tokens": engine.stats.prompt_tokens,
            "output_tokens": engine.stats.output_tokens, "steps": engine.stats.steps}

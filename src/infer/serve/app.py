"""The FastAPI application: OpenAI routes, /health, /metrics, errors in OpenAI's shape.

``create_app(engine, ...)`` wires one EngineLoop (started and stopped with the app's
lifespan) to the routes. Every error, including body validation, comes back as
``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from infer.serve.engine_loop import EngineLoop
from infer.serve.handlers import Handlers
from infer.serve.metrics import ServerMetrics
from infer.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest


def _validation_error(exc: RequestValidationError) -> APIError:
    errs = exc.errors()
    if not errs:
        return APIError("invalid request body")
    e = errs[0]
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    if e.get("type") == "json_invalid":
        return APIError(f"the body is not valid JSON: {e.get('msg')}")
    # union members show up as loc parts named after types ("str", "list[int]"); drop them
    loc = [p for p in loc if not (p[:1].isalpha() and ("[" in p or p in ("str", "int", "float", "bool")))]
    param = ".".join(loc) or None
    return APIError(f"{param or 'body'}: {e.get('msg')}", param=param)


def create_app(engine: Any, model_name: str, api_key: str | None = None,
               loop: EngineLoop | None = None) -> FastAPI:
    """An app serving ``engine`` under the OpenAI API as ``model_name``.

    ``api_key``: if set, /v1/* requires ``Authorization: Bearer <api_key>``. The engine loop
    starts with the app (lifespan) and stops with it, aborting what is still running.
    """
    if engine.tokenizer is None:
        raise ValueError("task=serve needs the model's tokenizer (engine built with skip_tokenizer_init)")
    metrics = ServerMetrics(model_name)
    metrics.on_step(engine)  # baseline counters and gauges before the loop owns the engine
    loop = loop or EngineLoop(engine, on_step=metrics.on_step, on_finish=metrics.on_finish)
    handlers = Handlers(loop, model_name)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop.start()
        try:
            yield
        finally:
            loop.shutdown()

    app = FastAPI(title="infer", lifespan=lifespan)
    app.state.engine_loop = loop
    app.state.metrics = metrics

    async def auth(request: Request) -> None:
        if api_key is None:
            return
        got = request.headers.get("authorization", "")
        if not secrets.compare_digest(got.encode(), f"Bearer {api_key}".encode()):
            raise APIError("invalid or missing API key (Authorization: Bearer <key>)", status=401,
                           type="authentication_error", code="invalid_api_key")

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = _validation_error(exc)
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(str(exc.detail), status=exc.status_code, type=kind).body(),
                            status_code=exc.status_code)

    @app.get("/health")
    async def health() -> Response:
        if loop.alive:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "engine loop stopped", "error": repr(loop.error)}, status_code=503)

    @app.get("/metrics")
    async def prom() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "infer", "max_model_len": engine.max_model_len}]}

    @app.post("/v1/completions", dependencies=[Depends(auth)])
    async def completions(body: CompletionRequest, request: Request) -> Any:
        return await handlers.completions(body, request)

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat(body: ChatCompletionRequest, request: Request) -> Any:
        return await handlers.chat(body, request)

    return app

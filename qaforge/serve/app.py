"""The FastAPI app: grader API + OpenAI API over one engine.

The server accepts connections at once and loads the model in the background (serve/state.py), so
that `/health` and `GET /` can say "not yet" (503) instead of refusing connections; it reports ready
only after the warm-up has run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import Response

from qaforge.serve.backends import Engine
from qaforge.serve.errors import install_error_handlers
from qaforge.serve.http_utils import (CLIENT_CLOSED, ApiKeyMiddleware, ClientDisconnected,
                                     RequestMetricsMiddleware)
from qaforge.serve.metrics import ServerMetrics
from qaforge.serve.routes_grader import router as grader_router
from qaforge.serve.routes_openai import router as openai_router
from qaforge.serve.settings import ServeSettings
from qaforge.serve.state import ServerState, load_and_warm_up

log = logging.getLogger("qaforge.serve")


def create_app(settings: ServeSettings, engine: Engine | None = None) -> FastAPI:
    """The app for `settings`; `engine` replaces the one settings.engine would build."""
    state = ServerState(settings, ServerMetrics())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(load_and_warm_up(state, engine))
        try:
            yield
        finally:
            # uvicorn has already waited for in-flight requests (graceful shutdown).
            load_failed = state.status == "failed"
            state.status = "stopping"
            state.metrics.ready.set(0)
            loader.cancel()
            await asyncio.gather(loader, return_exceptions=True)
            if state.engine is not None:
                await state.engine.shutdown()
            log.info("engine shut down")
            if load_failed and settings.exit_on_load_failure:
                # uvicorn would exit 0 after our SIGTERM; a server that could not load must not.
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                os._exit(1)

    app = FastAPI(title="qaforge", version="0.1.0", lifespan=lifespan)
    app.state.qaforge = state
    install_error_handlers(app)

    @app.exception_handler(ClientDisconnected)
    async def _gone(_: Request, __: ClientDisconnected) -> Response:
        return Response(status_code=CLIENT_CLOSED)

    if settings.api_key:  # inside the metrics middleware: refused requests are counted too
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key,
                           protect_grader=settings.protect_grader)
        log.info("API key required on /v1/*%s", " and the grader routes" if settings.protect_grader else "")
    app.add_middleware(RequestMetricsMiddleware, metrics=state.metrics)
    app.include_router(grader_router)
    app.include_router(openai_router)
    return app


def app_from_env() -> FastAPI:
    """What the root `serve.py` shim exposes to `uvicorn serve:app` (settings from QAFORGE_*)."""
    settings = ServeSettings.from_env()
    configure_logging(settings.log_level)
    return create_app(settings)


def configure_logging(level: str) -> None:
    logger = logging.getLogger("qaforge")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())

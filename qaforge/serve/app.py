"""The FastAPI app: grader API + OpenAI API over one engine.

The server accepts connections at once and loads the model in the background, so that `/health`
and `GET /` can say "not yet" (503) instead of refusing connections; it reports ready only after
the warm-up has run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import Response

from qaforge.serve.backends import Engine, make_engine
from qaforge.serve.errors import ApiError, install_error_handlers
from qaforge.serve.http_utils import CLIENT_CLOSED, ClientDisconnected, RequestMetricsMiddleware
from qaforge.serve.metrics import ServerMetrics
from qaforge.serve.service import GenerationService
from qaforge.serve.settings import ServeSettings
from qaforge.serve.warmup import warm_up

log = logging.getLogger("qaforge.serve")


@dataclass
class ServerState:
    settings: ServeSettings
    metrics: ServerMetrics
    status: str = "starting"          # starting | loading | warming | ready | failed | stopping
    error: str | None = None
    model_path: str = ""
    engine: Engine | None = None
    tokenizer: Any = None
    service: GenerationService | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def system_prompt(self) -> str | None:
        from qaforge.chat import DEFAULT_SYSTEM_PROMPT
        return DEFAULT_SYSTEM_PROMPT if self.settings.system_prompt is None else self.settings.system_prompt

    def ready_service(self) -> GenerationService:
        """The service, or a 503 with Retry-After while loading (or after a failed load)."""
        if self.status != "ready" or self.service is None:
            detail = f": {self.error}" if self.error else ""
            raise ApiError(503, f"model is not ready (status: {self.status}{detail})",
                           headers={"Retry-After": str(self.settings.retry_after)})
        return self.service


def get_state(request: Request) -> ServerState:
    return request.app.state.qaforge


def resolve_model(name_or_path: str) -> str:
    if not name_or_path:
        raise ValueError("no model given: pass --model or set QAFORGE_MODEL")
    from qaforge.modeling import resolve_model_path

    return str(resolve_model_path(name_or_path).resolve())


def load_tokenizer(model_path: str) -> Any:
    from qaforge.modeling import load_tokenizer as shared_loader

    return shared_loader(model_path)


async def load_and_warm_up(state: ServerState, engine: Engine | None) -> None:
    s = state.settings
    started = time.perf_counter()
    try:
        state.status = "loading"
        state.model_path = resolve_model(s.model)
        state.tokenizer = await asyncio.to_thread(load_tokenizer, state.model_path)
        state.engine = engine or make_engine(state.model_path, s)
        await state.engine.start()
        state.timings["load_seconds"] = time.perf_counter() - started
        state.metrics.load_seconds.set(state.timings["load_seconds"])
        state.metrics.add_engine_gauges(state.engine.stats)
        state.service = GenerationService(state.engine, state.tokenizer, s, state.metrics)
        log.info("model loaded: %s (%s engine) in %.2f s", state.model_path, state.engine.name,
                 state.timings["load_seconds"])
        if s.warmup:
            state.status = "warming"
            report = await warm_up(state.service, state.system_prompt, s.warmup_max_tokens,
                                   s.warmup_file or None)
            state.timings["warmup_seconds"] = report["seconds"]
            state.metrics.warmup_seconds.set(report["seconds"])
        state.status = "ready"
        state.metrics.ready.set(1)
        log.info("ready: load %.2f s + warm-up %.2f s", state.timings["load_seconds"],
                 state.timings.get("warmup_seconds", 0.0))
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - any load failure is reported, then the server exits
        state.status, state.error = "failed", f"{type(exc).__name__}: {exc}"
        log.exception("model load failed")
        if s.exit_on_load_failure:
            os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down; the process exits


def create_app(settings: ServeSettings, engine: Engine | None = None) -> FastAPI:
    """The app for `settings`; `engine` replaces the one settings.engine would build."""
    from qaforge.serve.routes_grader import router as grader_router
    from qaforge.serve.routes_openai import router as openai_router

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

"""The server's state: what app.py creates, the routes read (`get_state`), and the background load fills.

Routes import this module and app.py imports the routes, so imports point one way:
app.py -> routes_grader.py / routes_openai.py -> state.py -> service.py, backends.py, warmup.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from qaforge.chat import DEFAULT_SYSTEM_PROMPT
from qaforge.modeling import load_tokenizer, resolve_model_path
from qaforge.serve.backends import Engine, make_engine
from qaforge.serve.errors import ApiError
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


async def _timed(state: ServerState, key: str, work):
    started = time.perf_counter()
    result = await work
    state.timings[key] = time.perf_counter() - started
    return result


async def load_and_warm_up(state: ServerState, engine: Engine | None) -> None:
    """Resolve and load the model, start the engine, warm it up, then report ready; on failure report
    the reason (GET / and /health) and, unless told otherwise, stop the server."""
    s = state.settings
    started = time.perf_counter()
    try:
        state.status = "loading"
        if not s.model:
            raise ValueError("no model given: pass --model or set QAFORGE_MODEL")
        state.model_path = str(resolve_model_path(s.model).resolve())
        # The tokenizer (and the transformers import behind it) loads while the engine starts: both take
        # seconds, and ready-after-start is what a grader waits for.
        state.engine = engine or make_engine(state.model_path, s)
        tokenizer = asyncio.create_task(_timed(state, "tokenizer_seconds", asyncio.to_thread(load_tokenizer,
                                                                                          state.model_path)))
        try:
            await _timed(state, "engine_seconds", state.engine.start())
        finally:
            state.tokenizer = await tokenizer
        state.timings["load_seconds"] = time.perf_counter() - started
        state.metrics.load_seconds.set(state.timings["load_seconds"])
        state.metrics.add_engine_gauges(state.engine.stats)
        state.service = GenerationService(state.engine, state.tokenizer, s, state.metrics)
        log.info("model loaded: %s (%s engine) in %.2f s (engine %.2f s, tokenizer %.2f s, side by side)",
                 state.model_path, state.engine.name, state.timings["load_seconds"],
                 state.timings["engine_seconds"], state.timings["tokenizer_seconds"])
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

"""The server's state: what app.py creates, the routes read (`get_state`), and the background load fills.

Routes import this module and app.py imports the routes, so imports point one way:
app.py -> routes_grader.py / routes_openai.py -> state.py -> service.py, backends.py, warmup.py.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from qaforge.chat import DEFAULT_SYSTEM_PROMPT
from qaforge.fasttok import load_serving_tokenizer
from qaforge.modeling import resolve_model_path
from qaforge.serve.backends import Engine, make_engine
from qaforge.serve.errors import ApiError
from qaforge.serve.metrics import ServerMetrics
from qaforge.serve.service import GenerationService
from qaforge.serve.settings import ServeSettings
from qaforge.serve.warmup import warm_up

log = logging.getLogger("qaforge.serve")

# The module each engine's start() imports first (torch, triton, vllm behind it): imported on its own,
# timed as engine_import_seconds, so the startup breakdown tells imports from loading weights.
ENGINE_MODULES = {"native": "qaforge.engine.async_engine", "vllm": "vllm.v1.engine.async_llm"}


def process_age() -> float | None:
    """Seconds since this process was exec'd (Linux /proc; None elsewhere), to 10 ms."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            # The command name (field 2) may hold spaces: count fields after its closing parenthesis.
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


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
    created: float = field(default_factory=time.perf_counter)  # create_app(): imports are done

    def __post_init__(self) -> None:
        age = process_age()
        if age is not None:
            self.timings["imports_seconds"] = age  # exec -> create_app: interpreter, CLI, fastapi, ...

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


def _import_engine(name: str) -> None:
    try:
        importlib.import_module(ENGINE_MODULES[name])
    except ImportError:
        pass  # the engine's start() raises its own, explained, error


async def _start_engine(state: ServerState, imports: bool) -> None:
    if imports and state.engine.name in ENGINE_MODULES:
        await _timed(state, "engine_import_seconds", asyncio.to_thread(_import_engine, state.engine.name))
    await _timed(state, "engine_seconds", state.engine.start())


def startup_line(timings: dict[str, float]) -> str:
    """The one-line startup breakdown logged at ready (the same numbers as /health)."""
    t = {k.removesuffix("_seconds"): v for k, v in timings.items()}
    engine = (f"engine imports {t['engine_import']:.2f} s + " if "engine_import" in t else "") + \
        f"engine {t.get('engine', 0.0):.2f} s"
    line = f"ready: load {t.get('load', 0.0):.2f} s + warm-up {t.get('warmup', 0.0):.2f} s"
    if "ready" in t and "imports" in t:
        other = t["ready"] - t["imports"] - t.get("app", 0.0) - t.get("load", 0.0) - t.get("warmup", 0.0)
        line += (f"; {t['ready']:.2f} s after exec = imports {t['imports']:.2f} s + app {t.get('app', 0.0):.2f} s"
                 f" + load + warm-up + other {max(0.0, other):.2f} s")
    return (f"{line} (load: {engine} | tokenizer {t.get('tokenizer', 0.0):.2f} s, side by side; "
            f"structured-output vocabulary: built on the first structured request)")


async def load_and_warm_up(state: ServerState, engine: Engine | None) -> None:
    """Resolve and load the model, start the engine, warm it up, then report ready; on failure report
    the reason (GET / and /health) and, unless told otherwise, stop the server."""
    s = state.settings
    started = time.perf_counter()
    state.timings["app_seconds"] = started - state.created  # app build + the server's own start
    try:
        state.status = "loading"
        if not s.model:
            raise ValueError("no model given: pass --model or set QAFORGE_MODEL")
        state.model_path = str(resolve_model_path(s.model).resolve())
        # The tokenizer (and the transformers import behind it) loads while the engine starts: both take
        # seconds, and ready-after-start is what a grader waits for.
        # The light tokenizer (qaforge/fasttok.py) keeps transformers out of the process.
        state.engine = engine or make_engine(state.model_path, s)
        tokenizer = asyncio.create_task(_timed(state, "tokenizer_seconds", asyncio.to_thread(
            load_serving_tokenizer, state.model_path)))
        try:
            await _start_engine(state, imports=engine is None)
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
        age = process_age()
        if age is not None:
            state.timings["ready_seconds"] = age
        state.status = "ready"
        state.metrics.ready.set(1)
        log.info("%s", startup_line(state.timings))
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - any load failure is reported, then the server exits
        state.status, state.error = "failed", f"{type(exc).__name__}: {exc}"
        log.exception("model load failed")
        if s.exit_on_load_failure:
            os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down; the process exits

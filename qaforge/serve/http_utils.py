"""HTTP plumbing: request metrics middleware, client-disconnect and timeout handling, SSE."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from typing import Any, AsyncIterator, Awaitable, TypeVar

from fastapi import Request
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qaforge.serve.errors import ApiError, error_body
from qaforge.serve.metrics import ServerMetrics

T = TypeVar("T")
log = logging.getLogger("qaforge.serve")
CLIENT_CLOSED = 499  # nginx's code for "the client went away"; nobody receives it, metrics count it


class ClientDisconnected(Exception):
    pass


class RequestMetricsMiddleware:
    """Counts requests by route and status, and in-flight requests. Pure ASGI on purpose:
    BaseHTTPMiddleware would sit between the app and `receive`, hiding client disconnects."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            route = scope["path"] if scope["path"] in _KNOWN_ROUTES else "other"
            self.metrics.requests.labels(route, str(status["code"])).inc()


_KNOWN_ROUTES = {"/", "/predict", "/health", "/metrics", "/v1/models", "/v1/chat/completions",
                 "/v1/completions"}


class ApiKeyMiddleware:
    """`Authorization: Bearer KEY` on /v1/* (and on GET / and POST /predict with protect_grader);
    /health and /metrics stay open for probes and scrapers. Installed only when a key is set, so an
    open server pays nothing. The keys are compared in constant time, and neither the expected nor
    the offered key appears in a response or a log line."""

    def __init__(self, app: ASGIApp, api_key: str, protect_grader: bool = False):
        self.app, self.protect_grader = app, protect_grader
        self._expected = api_key.encode("ascii")

    def _guarded(self, path: str) -> bool:
        if path == "/v1" or path.startswith("/v1/"):
            return True
        return self.protect_grader and path in ("/", "/predict")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        scheme, _, offered = (header or b"").partition(b" ")
        if header is None:
            problem = "missing API key: send the header 'Authorization: Bearer <key>'"
        elif scheme.lower() != b"bearer" or not hmac.compare_digest(offered.strip(), self._expected):
            problem = "invalid API key in the Authorization header (expected 'Bearer <key>')"
        else:
            await self.app(scope, receive, send)
            return
        body = json.dumps(error_body(401, problem + "; this server was started with --api-key "
                                              "(QAFORGE_API_KEY)")).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})


async def _wait_for_disconnect(request: Request) -> None:
    # After the body is read, uvicorn's receive() blocks until the client disconnects
    # (or the response is complete, but we stop watching before sending the response).
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def guarded(request: Request, work: Awaitable[T], timeout: float) -> T:
    """Run `work` unless the client leaves (cancel it: the engine aborts the sequences) or the
    per-request timeout passes (cancel it and answer 504)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        if watcher in done:
            raise ClientDisconnected()
        raise ApiError(504, f"request did not finish within the server's {timeout:g} s timeout "
                            f"(QAFORGE_REQUEST_TIMEOUT); it was cancelled")
    finally:
        for t in (task, watcher):
            t.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)


def sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


async def with_deadline(events: AsyncIterator[str], timeout: float) -> AsyncIterator[str]:
    """End a stream at the per-request timeout with an error event (status 200 is already sent)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with contextlib.aclosing(events):
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    item = await anext(events)
            except StopAsyncIteration:
                return
            except TimeoutError:
                error = error_body(504, f"stream did not finish within the server's {timeout:g} s "
                                        f"timeout (QAFORGE_REQUEST_TIMEOUT); it was cancelled")
            except ApiError as exc:  # e.g. the queue filled between the check and the stream
                error = error_body(exc.status, exc.message, exc.param)
            except Exception as exc:  # noqa: BLE001 - the 200 is sent: report in-band, then end
                log.exception("stream failed")
                error = error_body(500, f"internal error: {type(exc).__name__}: {exc}")
            else:
                yield item
                continue
            yield sse(error)
            yield SSE_DONE
            return


class EventStreamResponse(StreamingResponse):
    """Server-sent events that stop generating as soon as the client disconnects.

    Starlette only notices a disconnect when a send fails (ASGI >= 2.4) or cancels the body
    iterator without closing it; here the iterator is always closed, so its `finally` (the engine
    abort) runs at once, whether the stream ends, fails or the client leaves."""

    def __init__(self, content: AsyncIterator[str], **kwargs: Any):
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(content, media_type="text/event-stream", headers=headers, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def listen() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        async def stream() -> None:
            with contextlib.suppress(OSError):
                await self.stream_response(send)

        streamer, watcher = asyncio.ensure_future(stream()), asyncio.ensure_future(listen())
        try:
            await asyncio.wait({streamer, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if streamer.done():
                streamer.result()  # re-raise a server error
        finally:
            for t in (streamer, watcher):
                t.cancel()
            await asyncio.gather(streamer, watcher, return_exceptions=True)
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()

"""Every error the server sends has one shape, OpenAI's, so the openai SDK shows its message:
`{"error": {"message": ..., "type": ..., "param": ..., "code": <http status>}}`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("qaforge.serve")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error",
          413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable",
          504: "timeout_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"),
                      "param": param, "code": status}}


def error_response(status: int, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


def describe_validation_errors(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """Pydantic's error list -> one readable sentence (and the first offending field)."""
    parts, first_param = [], None
    for err in errors[:5]:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        # Unions report one error per branch ("prompt.str", "prompt.list[str]"): name the field once.
        loc = [x for x in loc if not (x.startswith(("list[", "str", "int", "float", "bool"))
                                      or x.endswith("]"))] or loc
        where = ".".join(loc)
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx", {}).get("error", "")
            parts.append(f"malformed JSON body ({ctx})" if ctx else "malformed JSON body")
            continue
        if err.get("type") in ("model_attributes_type", "dict_type") and not where:
            parts.append("request body must be a JSON object (Content-Type: application/json)")
            continue
        if err.get("type") == "missing" and not where:
            parts.append("request body is missing (send a JSON object)")
            continue
        first_param = first_param or where or None
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", "invalid"))
    if len(errors) > 5:
        parts.append(f"... and {len(errors) - 5} more")
    unique = list(dict.fromkeys(parts))
    return "; ".join(unique), first_param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_validation_errors(list(exc.errors()))
        return error_response(400, message, param)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # A bug or a dead engine: still one JSON error the client can read (logged by uvicorn).
        log.exception("unhandled error")
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), None, getattr(exc, "headers", None))

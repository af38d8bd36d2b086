"""`response_format` on the OpenAI routes: check it, then let the engine constrain the sampling.

A bad schema is the client's mistake, so it is a 400 that quotes the grammar library's reason; the
grammar itself is compiled and enforced by the engine (qaforge/engine/structured.py for the native
engine, vLLM's own structured-output backend for vLLM).
"""

from __future__ import annotations

from typing import Any

from qaforge.serve.backends import LoraSampling
from qaforge.serve.errors import ApiError
from qaforge.serve.schemas import OpenAIFields
from qaforge.serve.service import GenerationService


def requested_format(body: OpenAIFields) -> dict[str, Any] | None:
    """The engine's view of a request's response_format: None (plain text), {"type": "json_object"}
    or {"type": "json_schema", "schema": {...}}."""
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if body.ignore_eos:
        raise ApiError(400, "ignore_eos cannot be combined with response_format: the grammar ends "
                            "the answer with EOS", "ignore_eos")
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise ApiError(400, "response_format.json_schema.schema is required with type json_schema "
                            "(e.g. {\"type\": \"json_schema\", \"json_schema\": {\"name\": \"x\", "
                            "\"schema\": {...}}})", "response_format")
    return {"type": "json_schema", "schema": fmt.json_schema.schema_}


async def constrained(service: GenerationService, sampling: Any, body: OpenAIFields,
                      thinking: bool = False) -> Any:
    """`sampling`, restricted to the request's response_format when it has one. In thinking mode (a chat
    with enable_thinking) the model thinks first and the format applies to what follows its thought."""
    fmt = requested_format(body)
    if fmt is None:
        return sampling
    if isinstance(sampling, LoraSampling):  # constrain the engine's own object, keep the adapter binding
        return LoraSampling(await constrained(service, sampling.sampling, body, thinking), sampling.lora)
    try:
        return await service.engine.constrain(sampling, fmt, thinking)
    except ValueError as exc:
        where = "response_format.json_schema" if fmt["type"] == "json_schema" else "response_format"
        raise ApiError(400, f"{where}: {exc}", "response_format") from None

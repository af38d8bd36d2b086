"""OpenAI-compatible API: /v1/models, /v1/chat/completions, /v1/completions (plain and SSE).

Without `stream`, both completions routes take the service's fast path (one engine call, one
finished output per sequence, batch_decode, orjson), as /predict does.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from qaforge.chat import render_prompt
from qaforge.serve.errors import ApiError
from qaforge.serve.http_utils import SSE_DONE, EventStreamResponse, guarded, sse, with_deadline
from qaforge.serve.jsonresponse import FastJSONResponse
from qaforge.serve.schemas import ChatCompletionRequest, CompletionRequest, OpenAIFields
from qaforge.serve.service import GenerationService
from qaforge.serve.state import ServerState, get_state

router = APIRouter(prefix="/v1")


@router.get("/models")
async def models(request: Request) -> JSONResponse:
    state = get_state(request)
    return JSONResponse({"object": "list", "data": [{
        "id": state.settings.model_name, "object": "model", "created": 0, "owned_by": "qaforge",
        "root": state.model_path or state.settings.model, "max_model_len": state.settings.max_model_len,
    }]})


def _check_common(state: ServerState, body: OpenAIFields) -> None:
    known = {state.settings.model_name, state.settings.model, state.model_path}
    if body.model not in known:
        raise ApiError(404, f"model {body.model!r} does not exist; this server serves "
                            f"{state.settings.model_name!r} (see /v1/models)", "model")
    if body.n != 1:
        raise ApiError(400, "n > 1 is not supported; send separate requests", "n")
    if body.logprobs:
        raise ApiError(400, "logprobs are not supported", "logprobs")
    if any(not s for s in body.stop_list()):
        raise ApiError(400, "stop strings must not be empty", "stop")


def _params(service: GenerationService, body: OpenAIFields, prompt_ids: list[int],
            requested: int | None, param: str) -> Any:
    # OpenAI's defaults (temperature 1, top_p 1) unless the request says otherwise.
    return service.sampling(
        prompt_ids, requested, param,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0, seed=body.seed, ignore_eos=body.ignore_eos,
        repetition_penalty=body.repetition_penalty)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


# ---- chat ------------------------------------------------------------------------------------
def chat_prompt_ids(state: ServerState, body: ChatCompletionRequest) -> list[int]:
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in body.messages]
    if messages[-1]["role"] == "assistant":
        raise ApiError(400, "the last message must be from the user (continuing an assistant "
                            "message is not supported)", "messages")
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise ApiError(400, "messages contain no user text", "messages")
    if messages[0]["role"] != "system" and state.system_prompt:
        messages.insert(0, {"role": "system", "content": state.system_prompt})
    text = render_prompt(state.tokenizer, messages)
    return state.tokenizer(text, add_special_tokens=False)["input_ids"]


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    state = get_state(request)
    service = state.ready_service()
    _check_common(state, body)
    if body.tools:
        raise ApiError(400, "tools are not supported", "tools")
    prompt_ids = chat_prompt_ids(state, body)
    requested = body.max_completion_tokens or body.max_tokens
    params = _params(service, body, prompt_ids, requested, "messages")
    rid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), state.settings.model_name
    stop = body.stop_list()
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(delta: dict, finish: str | None) -> dict:
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        async def events() -> AsyncIterator[str]:
            with service.admit(1):
                yield sse(chunk({"role": "assistant", "content": ""}, None))
                async for ev in service.stream(prompt_ids, params, stop):
                    if ev.text or ev.finish_reason is None:
                        yield sse(chunk({"content": ev.text}, None))
                    if ev.finish_reason is not None:
                        yield sse(chunk({}, ev.finish_reason))
                        if include_usage:
                            yield sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                                       "model": model, "choices": [],
                                       "usage": _usage(len(prompt_ids), ev.completion_tokens)})
                yield SSE_DONE

        return _start_stream(service, events(), state.settings.request_timeout)

    with service.admit(1):
        result = await guarded(request, service.complete(prompt_ids, params, stop),
                               state.settings.request_timeout)
    return FastJSONResponse({
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "finish_reason": result.finish_reason, "logprobs": None}],
        "usage": _usage(result.prompt_tokens, result.completion_tokens),
    })


def _start_stream(service: GenerationService, events: AsyncIterator[str], timeout: float) -> Any:
    # Refuse a full queue with a real 429 before the 200 of the stream is sent.
    with service.admit(1):
        pass
    return EventStreamResponse(with_deadline(events, timeout))


# ---- completions -----------------------------------------------------------------------------
def completion_prompts(state: ServerState, body: CompletionRequest) -> list[list[int]]:
    p = body.prompt
    if isinstance(p, str):
        p = [p]
    if not p:
        raise ApiError(400, "prompt is empty", "prompt")
    if isinstance(p[0], int):
        p = [p]
    if len(p) > state.settings.max_batch:
        raise ApiError(413, f"{len(p)} prompts is more than the limit of {state.settings.max_batch} "
                            f"(QAFORGE_MAX_BATCH)", "prompt")
    vocab = len(state.tokenizer)
    for i, item in enumerate(p):
        where = "prompt" if len(p) == 1 else f"prompt[{i}]"
        if isinstance(item, str):
            if not item.strip():
                raise ApiError(400, f"{where} is empty", where)
        elif not item or any(t < 0 or t >= vocab for t in item):
            raise ApiError(400, f"{where}: token ids must be a non-empty list of ids in [0, {vocab})",
                           where)
    if isinstance(p[0], str):  # a list of texts: one tokenizer call for all of them
        return state.tokenizer(list(p), add_special_tokens=False)["input_ids"]
    return [list(item) for item in p]


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request) -> Any:
    state = get_state(request)
    service = state.ready_service()
    _check_common(state, body)
    if body.echo or body.suffix:
        raise ApiError(400, "echo and suffix are not supported", "echo")
    prompts = completion_prompts(state, body)
    jobs = [(ids, _params(service, body, ids, body.max_tokens,
                          "prompt" if len(prompts) == 1 else f"prompt[{i}]"))
            for i, ids in enumerate(prompts)]
    rid, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), state.settings.model_name
    stop = body.stop_list()
    if body.stream:
        if len(jobs) != 1:
            raise ApiError(400, "stream: true takes one prompt", "prompt")
        (ids, params), = jobs
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(text: str, finish: str | None) -> dict:
            return {"id": rid, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}

        async def events() -> AsyncIterator[str]:
            with service.admit(1):
                async for ev in service.stream(ids, params, stop):
                    if ev.text or ev.finish_reason is not None:
                        yield sse(chunk(ev.text, ev.finish_reason))
                    if ev.finish_reason is not None and include_usage:
                        yield sse({"id": rid, "object": "text_completion", "created": created,
                                   "model": model, "choices": [],
                                   "usage": _usage(len(ids), ev.completion_tokens)})
                yield SSE_DONE

        return _start_stream(service, events(), state.settings.request_timeout)

    with service.admit(len(jobs)):
        results = await guarded(request, service.complete_batch(jobs, stop), state.settings.request_timeout)
    return FastJSONResponse({
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
                    for i, r in enumerate(results)],
        "usage": _usage(sum(r.prompt_tokens for r in results),
                        sum(r.completion_tokens for r in results)),
    })

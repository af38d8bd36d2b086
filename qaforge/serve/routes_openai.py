"""OpenAI-compatible API: /v1/models, /v1/chat/completions, /v1/completions (plain and SSE).

Without `stream`, both completions routes take the service's fast path (one engine call, one
finished output per sequence, batch_decode, orjson), as /predict does.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from jinja2 import TemplateError
from fastapi.responses import JSONResponse

from qaforge.chat import ReasoningSplitter, prompt_opens_think, render_prompt
from qaforge.serve.errors import ApiError
from qaforge.serve.http_utils import SSE_DONE, EventStreamResponse, guarded, sse, with_deadline
from qaforge.serve.jsonresponse import FastJSONResponse
from qaforge.serve.schemas import ChatCompletionRequest, CompletionRequest, OpenAIFields
from qaforge.serve.service import GenerationService
from qaforge.serve.state import ServerState, get_state
from qaforge.serve.structured import constrained

router = APIRouter(prefix="/v1")


@router.get("/models")
async def models(request: Request) -> JSONResponse:
    state = get_state(request)
    s = state.settings
    base = {"id": s.model_name, "object": "model", "created": 0, "owned_by": "qaforge",
            "root": state.model_path or s.model, "parent": None, "max_model_len": s.max_model_len}
    # vLLM's listing: each LoRA adapter after the base, its directory as root, the base as parent
    adapters = [dict(base, id=name, root=path, parent=s.model_name) for name, path in s.lora_modules.items()]
    return JSONResponse({"object": "list", "data": [base] + adapters})


def _check_common(state: ServerState, body: OpenAIFields) -> str | None:
    """Checks the fields every endpoint shares; returns the LoRA adapter `model` names (None: the base)."""
    s = state.settings
    adapters = s.lora_modules
    if body.model not in adapters and body.model not in {s.model_name, s.model, state.model_path}:
        served = ", ".join(repr(m) for m in [s.model_name, *adapters])
        raise ApiError(404, f"model {body.model!r} does not exist; this server serves {served} "
                            "(see /v1/models)", "model")
    if body.n != 1:
        raise ApiError(400, "n > 1 is not supported; send separate requests", "n")
    if body.logprobs:
        raise ApiError(400, "logprobs are not supported", "logprobs")
    if any(not stop for stop in body.stop_list()):
        raise ApiError(400, "stop strings must not be empty", "stop")
    return body.model if body.model in adapters else None


def _params(service: GenerationService, body: OpenAIFields, prompt_ids: list[int],
            requested: int | None, param: str, lora: str | None) -> Any:
    # OpenAI's defaults (temperature 1, top_p 1) unless the request says otherwise.
    sampling = service.sampling(
        prompt_ids, requested, param,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0, seed=body.seed, ignore_eos=body.ignore_eos,
        repetition_penalty=body.repetition_penalty)
    return service.engine.bind_lora(sampling, lora)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


# ---- chat ------------------------------------------------------------------------------------
# apply_chat_template's own arguments: a template variable of the same name would replace them.
_RESERVED_TEMPLATE_KWARGS = frozenset({
    "conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt",
    "continue_final_message", "tokenize", "padding", "truncation", "max_length", "return_tensors",
    "return_dict", "return_assistant_tokens_mask", "tokenizer_kwargs"})


def chat_template_kwargs(body: ChatCompletionRequest) -> dict[str, Any]:
    """The request's template variables; `enable_thinking` (vLLM's chat_template_kwargs or the
    top-level shorthand) is always there, False unless the request turns thinking on."""
    kwargs = dict(body.chat_template_kwargs or {})
    bad = sorted(k for k in kwargs if k in _RESERVED_TEMPLATE_KWARGS or not k.isidentifier())
    if bad:
        raise ApiError(400, f"chat_template_kwargs may not set {', '.join(map(repr, bad))}",
                       "chat_template_kwargs")
    if body.enable_thinking is not None:
        kwargs.setdefault("enable_thinking", body.enable_thinking)
    kwargs.setdefault("enable_thinking", False)
    if not isinstance(kwargs["enable_thinking"], bool):
        raise ApiError(400, "chat_template_kwargs.enable_thinking must be true or false, got "
                            f"{kwargs['enable_thinking']!r}", "chat_template_kwargs")
    return kwargs


def chat_prompt(state: ServerState, body: ChatCompletionRequest) -> tuple[list[int], ReasoningSplitter | None]:
    """The prompt's token ids, and in thinking mode the splitter that keeps the thought out of
    `content` (None: non-thinking, today's output)."""
    kwargs = chat_template_kwargs(body)
    thinking = kwargs["enable_thinking"]
    messages = chat_messages(state, body)
    try:
        text = render_prompt(state.tokenizer, messages, **kwargs)
    except TemplateError as exc:  # e.g. the template's raise_exception over a kwarg it refuses
        raise ApiError(400, f"the chat template refused the request: {exc}", "messages") from None
    splitter = ReasoningSplitter(prompt_opens_think(text)) if thinking else None
    return state.tokenizer(text, add_special_tokens=False)["input_ids"], splitter


def chat_messages(state: ServerState, body: ChatCompletionRequest) -> list[dict[str, str]]:
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in body.messages]
    if messages[-1]["role"] == "assistant":
        raise ApiError(400, "the last message must be from the user (continuing an assistant "
                            "message is not supported)", "messages")
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise ApiError(400, "messages contain no user text", "messages")
    if messages[0]["role"] != "system" and state.system_prompt:
        messages.insert(0, {"role": "system", "content": state.system_prompt})
    return messages


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    state = get_state(request)
    service = state.ready_service()
    lora = _check_common(state, body)
    if body.tools:
        raise ApiError(400, "tools are not supported", "tools")
    prompt_ids, splitter = chat_prompt(state, body)
    requested = body.max_completion_tokens or body.max_tokens
    params = await constrained(service, _params(service, body, prompt_ids, requested, "messages", lora), body,
                               thinking=splitter is not None)
    rid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), lora or state.settings.model_name
    stop = body.stop_list()
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(delta: dict, finish: str | None) -> dict:
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        async def events() -> AsyncIterator[str]:
            with service.admit(1):
                yield sse(chunk({"role": "assistant", "content": ""}, None))
                async for ev in service.stream(prompt_ids, params, stop, splitter):
                    if ev.reasoning:
                        yield sse(chunk({"reasoning_content": ev.reasoning}, None))
                    if ev.text:
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
        result = await guarded(request, service.complete(prompt_ids, params, stop, splitter),
                               state.settings.request_timeout)
    message = {"role": "assistant", "content": result.text}
    if splitter is not None:  # vLLM's field; null when the model did not think
        message["reasoning_content"] = result.reasoning or None
    return FastJSONResponse({
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": message,
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
    lora = _check_common(state, body)
    if body.echo or body.suffix:
        raise ApiError(400, "echo and suffix are not supported", "echo")
    prompts = completion_prompts(state, body)
    jobs = [(ids, await constrained(service, _params(service, body, ids, body.max_tokens,
                                                     "prompt" if len(prompts) == 1 else f"prompt[{i}]", lora), body))
            for i, ids in enumerate(prompts)]
    rid, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), lora or state.settings.model_name
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

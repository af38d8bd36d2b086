"""The course grader's API (its contract: docs/serving.md) plus /health and /metrics.

GET /      -> {"status": "batch"} once loaded and warmed up (503 {"status": <phase>} before)
POST /predict {"prompt": str | [str, ...]} -> {"response": str | [str, ...]}, same order and length

/predict never streams, so it takes the service's fast path: the whole list tokenized in one call,
handed to the engine in one call, one finished output per sequence, one batch_decode, orjson.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from qaforge.chat import ReasoningSplitter, prompts_token_ids, template_opens_think
from qaforge.serve.errors import ApiError
from qaforge.serve.http_utils import guarded
from qaforge.serve.jsonresponse import FastJSONResponse
from qaforge.serve.metrics import CONTENT_TYPE_LATEST
from qaforge.serve.schemas import PredictRequest
from qaforge.serve.state import ServerState, get_state

router = APIRouter()


@router.get("/")
async def root(request: Request) -> JSONResponse:
    state = get_state(request)
    if state.status == "ready":
        return JSONResponse({"status": "batch"})
    return JSONResponse({"status": state.status, "error": state.error}, status_code=503,
                        headers={"Retry-After": str(state.settings.retry_after)})


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    state = get_state(request)
    body = {"status": state.status, "engine": state.settings.engine,
            "model": state.settings.model_name, **{k: round(v, 3) for k, v in state.timings.items()}}
    if state.error:
        body["error"] = state.error
    if state.service is not None:
        body["pending_sequences"] = state.service.pending
    code = 200 if state.status == "ready" else 503
    headers = None if code == 200 else {"Retry-After": str(state.settings.retry_after)}
    return JSONResponse(body, status_code=code, headers=headers)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(get_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


def grader_prompts(state: ServerState, questions: list[str], thinking: bool = False) -> list[list[int]]:
    """The server's system prompt + the chat template (non-thinking unless the server's
    predict_thinking is on), as token ids (one batch call)."""
    return prompts_token_ids(state.tokenizer, questions, state.system_prompt, thinking)


@router.post("/predict")
async def predict(body: PredictRequest, request: Request) -> FastJSONResponse:
    state = get_state(request)
    service = state.ready_service()
    single = isinstance(body.prompt, str)
    questions = [body.prompt] if single else body.prompt
    if not questions:
        raise ApiError(400, "prompt is an empty list; send at least one question", "prompt")
    if len(questions) > state.settings.max_batch:
        raise ApiError(413, f"batch of {len(questions)} prompts is larger than the limit of "
                            f"{state.settings.max_batch} (QAFORGE_MAX_BATCH); split it", "prompt")
    for i, q in enumerate(questions):
        if not q.strip():
            where = "prompt" if single else f"prompt[{i}]"
            raise ApiError(400, f"{where} is empty; every question needs some text", where)
    s = state.settings
    prompts = grader_prompts(state, questions, s.predict_thinking)
    # Thinking answers still reach the grader as plain text: the content only, never the thought.
    opened = s.predict_thinking and template_opens_think(state.tokenizer)
    jobs = []
    for i, ids in enumerate(prompts):
        sampling = service.sampling(
            ids, body.max_tokens, "prompt" if single else f"prompt[{i}]",
            temperature=s.temperature if body.temperature is None else body.temperature,
            top_p=s.top_p if body.top_p is None else body.top_p,
            top_k=s.top_k if body.top_k is None else body.top_k,
            seed=body.seed, ignore_eos=body.ignore_eos, repetition_penalty=body.repetition_penalty)
        jobs.append((ids, sampling))
    with service.admit(len(jobs)):
        splitters = [ReasoningSplitter(opened) for _ in jobs] if s.predict_thinking else None
        results = await guarded(request, service.complete_batch(jobs, splitters=splitters), s.request_timeout)
    answers = [r.text for r in results]
    return FastJSONResponse({"response": answers[0] if single else answers})

"""The non-streaming fast path (AsyncLLM.generate_batch -> Engine.generate_final ->
GenerationService.complete_batch -> /predict, /v1/completions, /v1/chat/completions without stream):
the same greedy text as the streaming path, order kept for 192 questions, aborts that free the
engine's sequences, and orjson bytes identical to Starlette's JSONResponse."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.responses import JSONResponse

from qaforge.bench.load import random_prompts
from qaforge.serve.jsonresponse import dumps
from serve_helpers import metric_value, model_dir, serve_tiny, wait_for, warmup_questions

LONG_RUN = {"max_tokens": 3000, "ignore_eos": True}  # seconds of decoding on a CPU


def test_orjson_bytes_equal_starlette_json():
    tricky = "答案 warp\n\t\"q\" \\ \u2028 \x00 \x1f \x7f é 🚀 </think>"
    content = {"response": [tricky, "", "plain"], "usage": {"n": 3}, "x": None, "ok": True}
    assert dumps(content) == JSONResponse(content).body


# ---- the engine's batch API, in process --------------------------------------------------------
@pytest.fixture(scope="module")
def engine_model(request, tmp_path_factory):
    return str(model_dir(request, tmp_path_factory))


def _async_llm(model: str):
    from qaforge.engine.async_engine import AsyncLLM

    return AsyncLLM(model, device="cpu", dtype="float32", max_model_len=1024, max_num_seqs=16,
                    enforce_eager=True)


async def test_generate_batch_equals_streams_and_signals_first_tokens(engine_model):
    from qaforge.engine import SamplingParams

    llm = _async_llm(engine_model)
    await llm.start()
    try:
        prompts = [[5 + i, 40 + 3 * i, 77, 9 + i] for i in range(6)]
        params = [SamplingParams(max_tokens=4 + i, temperature=0.0, ignore_eos=True) for i in range(6)]
        firsts: list[int] = []
        batch = await llm.generate_batch(prompts, params, on_first_token=lambda i, t: firsts.append(i))
        streamed = []
        for p, sp in zip(prompts, params):
            ids = []
            async for out in llm.generate(p, sp):
                ids += out.new_token_ids
            streamed.append(ids)
        assert [o.new_token_ids for o in batch] == streamed
        assert [len(o.new_token_ids) for o in batch] == [4 + i for i in range(6)]
        assert all(o.finished and o.finish_reason == "length" for o in batch)
        assert sorted(firsts) == list(range(6))  # once per sequence, never per token
        assert all(o.first_token_time <= o.finish_time for o in batch)
        with pytest.raises(ValueError, match="must be ints"):  # nothing of a bad batch is added
            await llm.generate_batch([[1, 2], [-1]], params[0])
        with pytest.raises(ValueError, match="duplicate"):
            await llm.generate_batch([[1, 2], [3, 4]], params[0], ["a", "a"])
        assert llm.stats()["num_requests"] == 0 and llm.stats()["waiting"] == 0
    finally:
        await llm.shutdown()


async def test_cancelled_generate_batch_aborts_every_sequence(engine_model):
    from qaforge.engine import SamplingParams

    llm = _async_llm(engine_model)
    await llm.start()
    try:
        sp = SamplingParams(max_tokens=900, temperature=0.0, ignore_eos=True)
        task = asyncio.ensure_future(llm.generate_batch([[5, 6, 7]] * 4, sp))
        for _ in range(200):  # until the engine runs them
            await asyncio.sleep(0.02)
            if llm.stats()["running"] == 4:
                break
        assert llm.stats()["running"] == 4 and llm.stats()["num_requests"] == 4
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):
            await asyncio.sleep(0.02)
            if llm.stats()["running"] == 0:
                break
        s = llm.stats()
        assert s["running"] == 0 and s["waiting"] == 0 and s["num_requests"] == 0
        assert s["kv_blocks_free"] == s["kv_blocks_total"]
    finally:
        await llm.shutdown()


# ---- over real HTTP ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    with serve_tiny(request, tmp_path_factory,
                    env={"QAFORGE_MAX_MODEL_LEN": "4096", "QAFORGE_MAX_NUM_SEQS": "256"}) as srv:
        yield srv


def _stream_text(url: str, route: str, body: dict) -> str:
    text = []
    with httpx.stream("POST", url + route, json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = httpx.Response(200, content=line[6:]).json()["choices"][0]
            text.append(choice["text"] if "text" in choice else choice["delta"].get("content") or "")
    return "".join(text)


def test_completions_fast_path_equals_stream(url, model):
    for prompt in ("A warp is", "共享内存 bank conflict", "GPU"):
        body = {"model": model, "prompt": prompt, "max_tokens": 24, "temperature": 0.0}
        plain = httpx.post(url + "/v1/completions", json=body, timeout=120).json()
        assert plain["choices"][0]["text"] == _stream_text(url, "/v1/completions", body), prompt
        assert plain["usage"]["completion_tokens"] >= 1


def test_predict_equals_streamed_chat(url, model):
    questions = warmup_questions(3)
    answers = httpx.post(url + "/predict", json={"prompt": questions, "max_tokens": 24},
                         timeout=120).json()["response"]
    for q, a in zip(questions, answers):
        body = {"model": model, "messages": [{"role": "user", "content": q}], "max_tokens": 24,
                "temperature": 0.0}
        assert _stream_text(url, "/v1/chat/completions", body) == a, q
        plain = httpx.post(url + "/v1/chat/completions", json=body, timeout=120).json()
        assert plain["choices"][0]["message"]["content"] == a


def test_predict_192_questions_in_order(url):
    questions = [f"{i}: {q}" for i, q in enumerate(random_prompts(192, 12, seed=1))]
    body = {"max_tokens": 6, "temperature": 0.0}
    forward = httpx.post(url + "/predict", json={"prompt": questions, **body}, timeout=300)
    assert forward.status_code == 200
    answers = forward.json()["response"]
    assert len(answers) == 192 and all(isinstance(a, str) for a in answers)
    backward = httpx.post(url + "/predict", json={"prompt": questions[::-1], **body}, timeout=300).json()
    assert backward["response"] == answers[::-1]
    assert len(set(answers)) > 1  # distinct questions, distinct answers: the order is tested


def test_non_streaming_disconnect_frees_the_sequences(url, model):
    aborted = metric_value(url, "qaforge_sequences_total", {"finish_reason": "abort"})
    for route, body in (("/predict", {"prompt": ["a", "b", "c"], **LONG_RUN}),
                        ("/v1/completions", {"model": model, "prompt": ["a", "b"], **LONG_RUN})):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + route, json=body, timeout=1.0)
        assert wait_for(lambda: metric_value(url, "qaforge_engine_num_requests") == 0
                        and metric_value(url, "qaforge_engine_running") == 0
                        and metric_value(url, "qaforge_sequences_running") == 0
                        and metric_value(url, "qaforge_queue_depth") == 0, timeout=10), route
    assert metric_value(url, "qaforge_sequences_total", {"finish_reason": "abort"}) == aborted + 5
    r = httpx.post(url + "/predict", json={"prompt": "a", "max_tokens": 3}, timeout=60)
    assert r.status_code == 200 and isinstance(r.json()["response"], str)

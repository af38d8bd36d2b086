"""API keys over real HTTP: `qaforge serve --api-key KEY` (or QAFORGE_API_KEY) guards /v1/*; the
grader routes stay open unless --protect-grader; /health and /metrics always stay open; the key never
shows in the server's log (at debug level), its settings dump or its error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import openai
import pytest

from qaforge.serve.settings import ServeSettings
from serve_helpers import openai_client, serve_tiny

KEY = "sk-qaforge-test-4f1d9c2e7b"
WRONG = "sk-qaforge-wrong-0a9b8c7d"


DEBUG = {"QAFORGE_LOG_LEVEL": "debug"}  # the key must not show even in the most verbose log


@pytest.fixture(scope="module")
def keyed(request, tmp_path_factory):
    with serve_tiny(request, tmp_path_factory, env=DEBUG, args=["--api-key", KEY]) as srv:
        yield srv


def _client(url: str, key: str) -> openai.OpenAI:
    return openai_client(url, api_key=key)


def _chat(client: openai.OpenAI):
    # any model name: the key is checked before the body is read
    return client.chat.completions.create(model="any", messages=[{"role": "user", "content": "什么是warp？"}],
                                          max_tokens=4, temperature=0)


def test_v1_refuses_a_missing_or_wrong_key_with_an_openai_error(keyed):
    url = keyed.base_url
    r = httpx.get(url + "/v1/models")
    assert r.status_code == 401
    error = r.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == 401
    assert "Authorization: Bearer" in error["message"] and KEY not in r.text
    assert r.headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError) as info:
        _client(url, WRONG).models.list()
    assert "invalid API key" in str(info.value) and WRONG not in str(info.value)
    with pytest.raises(openai.AuthenticationError):
        _chat(_client(url, WRONG))
    # Not the bearer scheme, or a key that is only a prefix of the real one: refused as well.
    assert httpx.get(url + "/v1/models", headers={"Authorization": f"Basic {KEY}"}).status_code == 401
    assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY[:-1]}"}).status_code == 401
    assert httpx.post(url + "/v1/completions", json={}).status_code == 401  # before body validation


def test_v1_answers_with_the_key(keyed):
    client = _client(keyed.base_url, KEY)
    model = client.models.list().data[0].id
    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "什么是warp？"}],
                                          max_tokens=4, temperature=0)
    assert chat.choices[0].finish_reason in ("stop", "length") and chat.usage.completion_tokens >= 1
    done = client.completions.create(model=model, prompt="warp", max_tokens=3, temperature=0)
    assert done.usage.completion_tokens >= 1


def test_grader_health_and_metrics_stay_open_without_protect_grader(keyed):
    url = keyed.base_url
    assert httpx.get(url + "/").json() == {"status": "batch"}
    r = httpx.post(url + "/predict", json={"prompt": "什么是warp？", "max_tokens": 4}, timeout=60)
    assert r.status_code == 200 and isinstance(r.json()["response"], str)
    assert httpx.get(url + "/health").status_code == 200
    metrics = httpx.get(url + "/metrics")
    assert metrics.status_code == 200
    # the refused requests were counted, under their route and status
    assert 'route="/v1/models",status="401"' in metrics.text


def test_the_key_never_appears_in_the_log(keyed):
    client = _client(keyed.base_url, KEY)
    client.models.list()
    with pytest.raises(openai.AuthenticationError):
        _client(keyed.base_url, WRONG).models.list()
    log = keyed.log_tail(10**7)
    assert "API key required on /v1/*" in log  # the log is really being read, at debug level
    assert KEY not in log and WRONG not in log


def test_protect_grader_guards_the_grader_routes_but_not_health(request, tmp_path_factory):
    with serve_tiny(request, tmp_path_factory, env={**DEBUG, "QAFORGE_API_KEY": KEY},
                    args=["--protect-grader"]) as srv:
        url = srv.base_url
        assert httpx.get(url + "/").status_code == 401
        assert httpx.post(url + "/predict", json={"prompt": "warp"}).status_code == 401
        auth = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(url + "/", headers=auth).json() == {"status": "batch"}
        r = httpx.post(url + "/predict", json={"prompt": "warp", "max_tokens": 3}, headers=auth, timeout=60)
        assert r.status_code == 200 and isinstance(r.json()["response"], str)
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.get(url + "/metrics").status_code == 200
        assert httpx.get(url + "/v1/models").status_code == 401  # the key from the env guards /v1 too
        # qaforge's own grader simulator sends the key it finds in QAFORGE_API_KEY, as the server reads it
        exam = tmp_path_factory.mktemp("auth_exam") / "exam.jsonl"
        exam.write_text(json.dumps({"instruction": "什么是 warp？", "output": "32 个线程"}, ensure_ascii=False) + "\n",
                        encoding="utf-8")
        grader = [sys.executable, "-m", "qaforge", "eval", "--grader", url, "--data", str(exam), "--max-tokens", "4",
                  "--out", str(exam.parent / "out")]
        refused = subprocess.run(grader, capture_output=True, text=True, timeout=300,
                                 env={k: v for k, v in os.environ.items() if k != "QAFORGE_API_KEY"})
        keyed_run = subprocess.run(grader, capture_output=True, text=True, timeout=300,
                                   env={**os.environ, "QAFORGE_API_KEY": KEY})
        assert refused.returncode != 0 and keyed_run.returncode == 0, (refused.stdout[-800:], keyed_run.stdout[-2000:])
        assert KEY not in srv.log_tail(10**7)


def test_settings_hide_the_key_and_check_it():
    s = ServeSettings(model="m", api_key=KEY)
    assert KEY not in repr(s) and KEY not in str(s)
    assert ServeSettings.from_env({"QAFORGE_API_KEY": KEY}).api_key == KEY
    assert s.to_env()["QAFORGE_API_KEY"] == KEY  # a child server process gets it through its env
    with pytest.raises(ValueError, match="printable ASCII") as info:
        ServeSettings(api_key="sk with space")
    assert "sk with space" not in str(info.value)
    with pytest.raises(ValueError, match="--protect-grader.*needs an API key"):
        ServeSettings(protect_grader=True)

"""Every bad input gets a 4xx with a message that says what is wrong (docs/serving.md lists them),
and the server keeps answering good requests afterwards."""

from __future__ import annotations

import httpx
import pytest

from serve_helpers import metric_value, serve_tiny


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    with serve_tiny(request, tmp_path_factory,
                    env={"QAFORGE_MAX_BATCH": "8", "QAFORGE_MAX_PENDING": "16"}) as srv:
        yield srv


LONG = "warp " * 700  # far more than the 512-token context
CHAT = "/v1/chat/completions"
CMPL = "/v1/completions"


def user(text="q"):
    return [{"role": "user", "content": text}]


# (path, JSON body or raw bytes, status, words the message must contain)
CASES = [
    ("/predict", b"{not json", 400, "malformed JSON"),
    ("/predict", b"", 400, "body"),
    ("/predict", [], 400, "must be a JSON object"),
    ("/predict", "prompt", 400, "must be a JSON object"),
    ("/predict", {}, 400, "prompt: Field required"),
    ("/predict", {"prompt": 5}, 400, "prompt"),
    ("/predict", {"prompt": None}, 400, "prompt"),
    ("/predict", {"prompt": ["ok", 3]}, 400, "prompt"),
    ("/predict", {"prompt": {"q": 1}}, 400, "prompt"),
    ("/predict", {"prompt": ""}, 400, "prompt is empty"),
    ("/predict", {"prompt": "  \n "}, 400, "prompt is empty"),
    ("/predict", {"prompt": []}, 400, "empty list"),
    ("/predict", {"prompt": ["ok", ""]}, 400, "prompt[1] is empty"),
    ("/predict", {"prompt": LONG}, 400, "context is 512 tokens"),
    ("/predict", {"prompt": ["ok", LONG]}, 400, "prompt[1]: 1"),
    ("/predict", {"prompt": ["q"] * 9}, 413, "QAFORGE_MAX_BATCH"),
    ("/predict", {"prompt": "q", "max_tokens": 0}, 400, "max_tokens"),
    ("/predict", {"prompt": "q", "max_tokens": "5"}, 400, "max_tokens"),
    ("/predict", {"prompt": "q", "temperature": -1}, 400, "temperature"),
    (CHAT, {"messages": user()}, 400, "model: Field required"),
    (CHAT, {"model": "MODEL", "messages": []}, 400, "messages"),
    (CHAT, {"model": "MODEL", "messages": "hi"}, 400, "messages"),
    (CHAT, {"model": "MODEL", "messages": [{"role": "tool", "content": "x"}]}, 400, "role"),
    (CHAT, {"model": "MODEL", "messages": [{"role": "user", "content": 7}]}, 400, "content"),
    (CHAT, {"model": "MODEL", "messages": user("  ")}, 400, "no user text"),
    (CHAT, {"model": "MODEL", "messages": user() + [{"role": "assistant", "content": "a"}]}, 400,
     "last message"),
    (CHAT, {"model": "MODEL", "messages": user(LONG)}, 400, "shorten the prompt"),
    (CHAT, {"model": "nope", "messages": user()}, 404, "does not exist"),
    (CHAT, {"model": "MODEL", "messages": user(), "n": 3}, 400, "n > 1"),
    (CHAT, {"model": "MODEL", "messages": user(), "temperature": 2.5}, 400, "temperature"),
    (CHAT, {"model": "MODEL", "messages": user(), "top_p": 0}, 400, "top_p"),
    (CHAT, {"model": "MODEL", "messages": user(), "max_tokens": -3}, 400, "max_tokens"),
    (CHAT, {"model": "MODEL", "messages": user(), "stop": [""]}, 400, "stop"),
    (CHAT, {"model": "MODEL", "messages": user(), "stop": 5}, 400, "stop"),
    (CHAT, {"model": "MODEL", "messages": user(), "stream": "yes"}, 400, "stream"),
    (CHAT, {"model": "MODEL", "messages": user(), "logprobs": True}, 400, "logprobs"),
    (CHAT, {"model": "MODEL", "messages": user(), "seed": -1}, 400, "seed"),
    (CMPL, {"model": "MODEL", "prompt": []}, 400, "prompt is empty"),
    (CMPL, {"model": "MODEL", "prompt": ""}, 400, "prompt is empty"),
    (CMPL, {"model": "MODEL", "prompt": [10 ** 9]}, 400, "token ids"),
    (CMPL, {"model": "MODEL", "prompt": ["a", "b"], "stream": True}, 400, "one prompt"),
    (CMPL, {"model": "MODEL", "prompt": ["a"] * 9}, 413, "QAFORGE_MAX_BATCH"),
    (CMPL, {"model": "MODEL", "prompt": "a", "echo": True}, 400, "echo"),
]


def _ids(case):
    path, body, status, _ = case
    return f"{path}-{status}-{str(body)[:40]}"


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_bad_input_gets_4xx_with_message(url, model, case):
    path, body, status, words = case
    if isinstance(body, bytes):
        r = httpx.post(url + path, content=body, headers={"Content-Type": "application/json"})
    else:
        if isinstance(body, dict) and body.get("model") == "MODEL":
            body = dict(body, model=model)
        r = httpx.post(url + path, json=body, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error["message"], error
    assert error["code"] == status and error["type"]


def test_json_sent_as_text_plain_is_refused(url):
    r = httpx.post(url + "/predict", content=b'{"prompt": "q"}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and "application/json" in r.json()["error"]["message"]


def test_wrong_method_and_unknown_path(url):
    r = httpx.get(url + "/predict")
    assert r.status_code == 405 and "Method Not Allowed" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/embeddings", json={})
    assert r.status_code == 404 and r.json()["error"]["message"]


def test_server_still_healthy_and_no_5xx_after_bad_input(url):
    r = httpx.post(url + "/predict", json={"prompt": "什么是 warp？", "max_tokens": 4}, timeout=60)
    assert r.status_code == 200 and isinstance(r.json()["response"], str)
    for route in ("/predict", "/v1/chat/completions", "/v1/completions"):
        for code in ("500", "502", "503", "504"):
            assert metric_value(url, "qaforge_requests_total", {"route": route, "status": code}) == 0

"""Thinking mode on the server (native engine, tiny Qwen3, real HTTP, the openai SDK):
`chat_template_kwargs: {"enable_thinking": true}` returns the thought as `reasoning_content`, never
inside `content`; without it the request is non-thinking as before; /predict stays non-thinking
unless the server's predict_thinking is on, and then answers with the content only.

The tiny model never writes `</think>` (nor, under Qwen3's template, `<think>`) by itself, so the
split of a closed thought is tested on the token stream (TextStream with the real tokenizer), and
over HTTP with a copy of the model whose template opens the think block in the prompt (as
Qwen3-Thinking-2507's does): there a request whose max_tokens ends inside the thought must give an
empty content and the whole text as reasoning_content.
"""

from __future__ import annotations

import shutil

import httpx
import openai
import pytest

from serve_helpers import NO_VLLM, model_dir, openai_client, serve_tiny, warmup_questions

QUESTIONS = warmup_questions(3)
THINK_ON = {"chat_template_kwargs": {"enable_thinking": True}}


def _opened_think_copy(src, dst):
    """The tiny model with a template that opens `<think>\\n` in thinking mode's generation prompt."""
    shutil.copytree(src, dst)
    path = dst / "chat_template.jinja"
    text = path.read_text(encoding="utf-8")
    marker = '{{- "<think>\\n\\n</think>\\n\\n" -}}\n    {%- endif -%}'
    assert text.count(marker) == 1, "the tiny model's template changed; update this test"
    path.write_text(text.replace(marker, marker.replace(
        "{%- endif -%}", '{%- else -%}\n        {{- "<think>\\n" -}}\n    {%- endif -%}')), encoding="utf-8")
    return dst


@pytest.fixture(scope="module")
def tiny(request, tmp_path_factory):
    return model_dir(request, tmp_path_factory)


@pytest.fixture(scope="module")
def plain_server(request, tmp_path_factory, tiny):
    with serve_tiny(request, tmp_path_factory, model=tiny) as srv:
        yield srv


@pytest.fixture(scope="module")
def opened_server(request, tmp_path_factory, tiny):
    model = _opened_think_copy(tiny, tmp_path_factory.mktemp("think") / "opened_think_model")
    with serve_tiny(request, tmp_path_factory, model=model, args=["--predict-thinking"]) as srv:
        yield srv


def _client(srv) -> tuple[openai.OpenAI, str]:
    client = openai_client(srv.base_url)
    return client, client.models.list().data[0].id


def _chat(srv, question, stream=False, **extra):
    client, model = _client(srv)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                          max_tokens=16, temperature=0, stream=stream, **extra)


def _streamed(srv, question, **extra) -> tuple[str, str, list[str]]:
    reasoning, content, reasons = [], [], []
    for chunk in _chat(srv, question, stream=True, **extra):
        for choice in chunk.choices:
            reasoning.append(getattr(choice.delta, "reasoning_content", None) or "")
            content.append(choice.delta.content or "")
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    return "".join(reasoning), "".join(content), reasons


def _predict(srv, prompt):
    return httpx.post(srv.base_url + "/predict", json={"prompt": prompt, "max_tokens": 16},
                      timeout=120).json()["response"]


# ---- the token stream (real tokenizer) -------------------------------------------------------
def test_text_stream_splits_a_closed_thought_token_by_token(tiny):
    from transformers import AutoTokenizer

    from qaforge.chat import ReasoningSplitter
    from qaforge.serve.textstream import TextStream

    tok = AutoTokenizer.from_pretrained(str(tiny))
    text = "<think>\n先想：warp 有 32 个线程 (a < b)。\n</think>\n\nwarp 是 32 个线程。STOP 之后"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    stream = TextStream(tok, stop=["STOP", "线程 ("], splitter=ReasoningSplitter())
    content, reasoning = [], []
    for i in ids:
        content.append(stream.push([i]))
        reasoning.append(stream.take_reasoning())
        assert "<think>" not in "".join(content) and "先想" not in "".join(content)
        if stream.stopped:
            break
    content.append(stream.finish())
    reasoning.append(stream.take_reasoning())
    # The stop strings cut the content only: "线程 (" inside the thought did not end it.
    assert "".join(reasoning) == "先想：warp 有 32 个线程 (a < b)。"
    assert "".join(content) == "warp 是 32 个线程。" and stream.stopped
    plain = TextStream(tok)  # thinking off: today's cleaner hides the thought, nothing more
    assert "".join(plain.push([i]) for i in ids) + plain.finish() == "warp 是 32 个线程。STOP 之后"
    assert plain.take_reasoning() == ""


# ---- over HTTP -------------------------------------------------------------------------------
def test_thinking_off_keeps_todays_output(plain_server):
    q = QUESTIONS[0]
    default = _chat(plain_server, q).choices[0].message
    explicit = _chat(plain_server, q, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert default.content == explicit.choices[0].message.content == _predict(plain_server, q)
    assert default.content and "reasoning_content" not in default.model_dump(exclude_none=False)
    assert _streamed(plain_server, q)[:2] == ("", default.content)


def test_thinking_on_when_the_model_writes_no_think_block_is_all_content(plain_server):
    q = QUESTIONS[1]
    on = _chat(plain_server, q, extra_body=THINK_ON).choices[0].message
    off = _chat(plain_server, q).choices[0].message
    assert on.reasoning_content is None and on.content and on.content != off.content
    assert _streamed(plain_server, q, extra_body=THINK_ON)[:2] == ("", on.content)


def test_max_tokens_inside_the_thought_gives_empty_content(opened_server):
    q = QUESTIONS[0]
    reply = _chat(opened_server, q, extra_body=THINK_ON)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "length"
    assert message.content == "" and len(message.reasoning_content) > 5
    assert "<think>" not in message.reasoning_content and "<|" not in message.reasoning_content
    reasoning, content, reasons = _streamed(opened_server, q, extra_body=THINK_ON)
    assert (reasoning, content, reasons) == (message.reasoning_content, "", ["length"])
    shorthand = _chat(opened_server, q, extra_body={"enable_thinking": True}).choices[0].message
    assert shorthand.reasoning_content == message.reasoning_content


def test_thinking_off_is_unchanged_by_a_template_that_thinks(opened_server, plain_server):
    q = QUESTIONS[2]
    assert _chat(opened_server, q).choices[0].message.content == _chat(plain_server, q).choices[0].message.content


def test_predict_thinking_setting_answers_with_the_content_only(opened_server, plain_server):
    # Default server: non-thinking answers. predict_thinking: the thought never reaches the grader
    # (cut by max_tokens here, so the content, and the answer, is empty).
    assert all(_predict(plain_server, QUESTIONS))
    assert _predict(opened_server, QUESTIONS) == ["", "", ""]
    assert _predict(opened_server, QUESTIONS[0]) == ""


@pytest.mark.parametrize("kwargs,words", [
    ({"chat_template_kwargs": {"enable_thinking": "yes"}}, "enable_thinking must be true or false"),
    ({"chat_template_kwargs": {"tokenize": True}}, "may not set 'tokenize'"),
    ({"chat_template_kwargs": ["enable_thinking"]}, "chat_template_kwargs"),
    ({"enable_thinking": 1}, "enable_thinking"),
])
def test_bad_thinking_fields_get_400(plain_server, kwargs, words):
    client, model = _client(plain_server)
    r = httpx.post(plain_server.base_url + "/v1/chat/completions", timeout=60, json={
        "model": model, "messages": [{"role": "user", "content": "q"}], "max_tokens": 4, **kwargs})
    assert r.status_code == 400 and words in r.text, r.text


# ---- the vLLM backend (slow; skipped where no interpreter can import vllm) -------------------
def test_vllm_backend_splits_the_thought_the_same_way(request, tiny, tmp_path_factory):
    from qaforge.serve.launcher import vllm_python

    python = vllm_python()
    if python is None:
        pytest.skip(NO_VLLM)
    model = _opened_think_copy(tiny, tmp_path_factory.mktemp("think_vllm") / "opened_think_model")
    with serve_tiny(request, tmp_path_factory, engine="vllm", model=model, python=python,
                    env={"QAFORGE_DTYPE": "float32"}, args=["--predict-thinking"]) as srv:
        q = QUESTIONS[0]
        message = _chat(srv, q, extra_body=THINK_ON).choices[0].message
        assert message.content == "" and len(message.reasoning_content) > 5
        assert _streamed(srv, q, extra_body=THINK_ON) == (message.reasoning_content, "", ["length"])
        off = _chat(srv, q).choices[0].message
        assert off.content and "reasoning_content" not in off.model_dump()
        assert _predict(srv, [q]) == [""]

"""Structured output (`response_format`) over real HTTP with the openai SDK, on the native engine and the
tiny model: JSON-schema answers validate (checked by `jsonschema`, independent of the grammar library)
on 50 of 50 hot samples, json_object answers parse, streaming works, bad schemas are a 400 that says
why, unconstrained requests are unchanged (alone or batched with constrained ones), and
`qaforge generate --generator llm` against the server never needs JSON repair or a re-ask."""

from __future__ import annotations

import asyncio
import json
import jsonschema
import openai
import pytest

from qaforge.generate.llm_client import LLMOptions, items_schema
from qaforge.generate.pipeline import generate_dataset
from qaforge.paths import DEFAULT_CORPUS_DIR
from qaforge.serve.launcher import vllm_python
from serve_helpers import NO_VLLM, async_openai_client, openai_client, serve_tiny

QUESTION = "什么是warp？"
SCHEMA = {
    "type": "object",
    "properties": {
        "term": {"type": "string", "maxLength": 24},
        "threads": {"type": "integer", "minimum": 1, "maximum": 1024},
        "tags": {"type": "array", "items": {"enum": ["cuda", "gpu", "warp", "memory"]}, "maxItems": 3},
        "coalesced": {"type": "boolean"},
    },
    "required": ["term", "threads", "tags", "coalesced"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "warp_fact", "schema": SCHEMA}}


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    # A context of 4,096 (the tiny model's limit) for generate's few-shot prompts and long answers.
    with serve_tiny(request, tmp_path_factory,
                    args=["--max-model-len", "4096", "--max-tokens", "256"]) as srv:
        yield srv


def _messages(text: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": text}]


async def _many(url: str, model: str, n: int, **kwargs) -> list:
    async with async_openai_client(url, timeout=300) as aclient:
        return await asyncio.gather(*(aclient.chat.completions.create(
            model=model, messages=_messages(), seed=i, **kwargs) for i in range(n)))


def test_json_schema_answers_validate_50_of_50_at_temperature_1(url, model):
    replies = asyncio.run(_many(url, model, 50, temperature=1.0, max_tokens=256, response_format=FORMAT))
    texts = [r.choices[0].message.content for r in replies]
    for reply, text in zip(replies, texts):
        assert reply.choices[0].finish_reason == "stop", text
        jsonschema.validate(json.loads(text), SCHEMA)
    assert len(set(texts)) > 10  # really sampled (different seeds), not one answer fifty times


def test_json_schema_streams(client, model):
    chunks = list(client.chat.completions.create(
        model=model, messages=_messages(), temperature=1.0, seed=7, max_tokens=256,
        response_format=FORMAT, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    jsonschema.validate(json.loads(text), SCHEMA)
    plain = client.chat.completions.create(model=model, messages=_messages(), temperature=1.0, seed=7,
                                           max_tokens=256, response_format=FORMAT)
    assert plain.choices[0].message.content == text  # same seed, same grammar: the same answer


def test_json_schema_on_completions(client, model):
    done = client.completions.create(model=model, prompt=["warp", "shared memory"], temperature=1.0,
                                     seed=3, max_tokens=256, extra_body={"response_format": FORMAT})
    assert len(done.choices) == 2
    for choice in done.choices:
        jsonschema.validate(json.loads(choice.text), SCHEMA)


def _closes_to_an_object(prefix: str) -> bool:
    """Whether `prefix` is the start of a JSON object: some short ending makes json.loads read it as
    one. The ending is the prefix's open brackets closed in order (found by a string-aware scan), after
    at most a partial literal, number or escape completed, a string closed and a value supplied."""
    stack, in_string, escaped = [], False, False
    for ch in prefix:
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not stack or stack.pop() != ch:
                return False
    body = prefix.rstrip()
    body = body[:-1] if body.endswith(",") else body
    closing = "".join(reversed(stack))
    for core in ("", "0", "00", "000", "0000", "n", "rue", "ue", "e", "alse", "lse", "se", "ull", "ll", "l"):
        for quote in ("", '"'):
            for value in ("", ":0"):
                try:
                    if isinstance(json.loads(body + core + quote + value + closing), dict):
                        return True
                except json.JSONDecodeError:
                    continue
    return False


def test_json_object_gives_json(url, model):
    # The tiny model never learnt to close a JSON object, so it rarely finishes one within a budget:
    # every answer must parse when the grammar ended it, and be the start of an object otherwise.
    replies = asyncio.run(_many(url, model, 8, temperature=1.0, max_tokens=96,
                                response_format={"type": "json_object"}))
    for reply in replies:
        text, reason = reply.choices[0].message.content, reply.choices[0].finish_reason
        if reason == "stop":
            assert isinstance(json.loads(text), dict), text
        else:
            assert reason == "length" and text.startswith("{") and _closes_to_an_object(text), text
    assert not _closes_to_an_object('{"a":1}}') and not _closes_to_an_object('{"a" 1')  # it can fail


def test_unconstrained_requests_are_unchanged(url, client, model):
    kwargs = dict(model=model, messages=_messages(), temperature=0, max_tokens=48)
    alone = client.chat.completions.create(**kwargs).choices[0].message.content
    assert not alone.lstrip().startswith("{")  # the tiny model does not write JSON by itself
    as_text = client.chat.completions.create(**kwargs, response_format={"type": "text"})
    assert as_text.choices[0].message.content == alone

    async def mixed() -> tuple[list, object]:
        async with async_openai_client(url, timeout=300) as aclient:
            constrained = [aclient.chat.completions.create(
                model=model, messages=_messages(), temperature=1.0, seed=i, max_tokens=256,
                response_format=FORMAT) for i in range(6)]
            return await asyncio.gather(aclient.chat.completions.create(**kwargs), *constrained)

    free, *constrained = asyncio.run(mixed())
    # Batched with constrained rows, the free row's logits were left alone.
    assert free.choices[0].message.content == alone
    for reply in constrained:
        jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)


@pytest.mark.parametrize("response_format, reason", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strng"}}}, "Invalid type"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "integer", "minimum": 5, "maximum": 1}}}, "Unsatisfiable"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "string", "pattern": "(("}}}, "regex"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "json_schema.schema is required"),
    ({"type": "yaml"}, "response_format.type"),
])
def test_bad_response_formats_are_a_400_that_says_why(client, model, response_format, reason):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=_messages(), max_tokens=8,
                                       response_format=response_format)
    assert reason in str(info.value)
    assert info.value.body["param"].startswith("response_format")


def test_ignore_eos_with_a_response_format_is_refused(client, model):
    with pytest.raises(openai.BadRequestError, match="ignore_eos"):
        client.chat.completions.create(model=model, messages=_messages(), max_tokens=8,
                                       response_format=FORMAT, extra_body={"ignore_eos": True})


def test_generate_against_qaforge_serve_never_repairs_json(url, model, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    source = sorted(DEFAULT_CORPUS_DIR.glob("ch0*.md"))[0]
    (corpus / source.name).write_text(source.read_text(encoding="utf-8")[:1200], encoding="utf-8")
    # max_tokens: room for the schema's longest item (question 300 + answer 2,000 characters) at
    # about one character per token, the tiny tokenizer's worst; it writes about two.
    options = LLMOptions(base_url=f"{url}/v1", api_key="EMPTY", model=model, max_tokens=2560,
                         target_per_chapter=3, questions_per_call=1, max_rounds=1, concurrency=4,
                         temperature=0.7)
    report = generate_dataset(corpus, tmp_path / "out", generator="llm", exam_size=0, llm=options,
                              show_progress=False, print_table=False)
    planner = report["planner"]
    assert report["usage"]["total"]["calls"] >= 3
    assert planner["response_format_fallbacks"] == []      # the server took the json_schema format
    assert planner["replies_repaired"] == 0 and planner["calls_reasked"] == 0
    assert planner["calls_failed"] == 0
    journal = [json.loads(line) for line in (tmp_path / "out" / "journal.jsonl").read_text().splitlines()]
    texts = [t for entry in journal if entry["type"] == "call" for t in entry["texts"]]
    assert len(texts) == report["usage"]["total"]["calls"]  # one reply per call: nothing re-asked
    for text in texts:
        jsonschema.validate(json.loads(text), items_schema(1)["schema"])


@pytest.mark.skipif(vllm_python() is None, reason=NO_VLLM)
def test_vllm_backend_passes_response_format_through(request, tmp_path_factory):
    with serve_tiny(request, tmp_path_factory, engine="vllm", env={"QAFORGE_DTYPE": "float32"},
                    python=vllm_python()) as srv:
        client = openai_client(srv.base_url)
        model = client.models.list().data[0].id
        for seed in range(5):
            reply = client.chat.completions.create(model=model, messages=_messages(), temperature=1.0,
                                                   seed=seed, max_tokens=256, response_format=FORMAT)
            jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)
        with pytest.raises(openai.BadRequestError, match="Invalid type"):
            client.chat.completions.create(model=model, messages=_messages(), max_tokens=8,
                                           response_format={"type": "json_schema", "json_schema": {
                                               "name": "x", "schema": {"type": "strng"}}})

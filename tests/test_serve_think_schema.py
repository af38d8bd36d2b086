"""Structured output in thinking mode (native engine): the model thinks first, the grammar starts after
its `</think>`, and the reply has `reasoning_content` plus schema-valid `content`.

The tiny model never closes a thought by itself, so these tests lean on the rule that makes them
deterministic (engine/structured.py): a thought may use half of max_tokens; then `</think>` is forced.
First the masking step on its own (real tokenizer, no model), then over HTTP with the openai SDK."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import openai
import pytest
import torch

from qaforge.engine import SamplingParams
from qaforge.engine.sequence import Sequence
from qaforge.engine.structured import GrammarError, GrammarMasks, Vocabulary, thought_budget
from qaforge.serve.launcher import start_server
from serve_helpers import FAST_ENV, model_dir

SCHEMA = {"type": "object", "properties": {"term": {"type": "string", "maxLength": 16},
                                           "threads": {"type": "integer", "minimum": 1, "maximum": 1024}},
          "required": ["term", "threads"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "warp", "schema": SCHEMA}}
THINK_ON = {"chat_template_kwargs": {"enable_thinking": True}}


@pytest.fixture(scope="module")
def tiny(request, tmp_path_factory):
    return model_dir(request, tmp_path_factory)


@pytest.fixture(scope="module")
def vocab(tiny):
    import json as _json

    from qaforge.modeling import load_tokenizer

    config = _json.loads((tiny / "config.json").read_text())
    tok = load_tokenizer(str(tiny))
    return Vocabulary(tok, config["vocab_size"], [tok.convert_tokens_to_ids("<|im_end|>")]), tok


def _walk(vocab, prompt_tail: list[int], budget: int, steps: int, seed: int = 0):
    """Drive GrammarMasks like the sampler does, picking a random allowed token each step; returns the
    completion and the allowed sets of every step."""
    voc, _ = vocab
    grammar = voc.json_schema(SCHEMA).after_thought(budget)
    seq = Sequence([1, 2, 3] + prompt_tail, SamplingParams(max_tokens=steps, grammar=grammar))
    masks, rng, allowed_sets = GrammarMasks(), np.random.default_rng(seed), []
    for _ in range(steps):
        logits = torch.zeros(1, voc.size)
        masks.apply(logits, [seq], [0])
        allowed = torch.isfinite(logits[0]).nonzero().flatten().tolist()
        allowed_sets.append(set(allowed))
        seq.token_ids.append(int(rng.choice(allowed)))
    return seq.completion_token_ids, allowed_sets


def test_the_thought_is_opened_then_free_then_closed_at_its_budget(vocab):
    voc, tok = vocab
    open_id, close_id = voc.think_ids
    budget = 6
    completion, allowed = _walk(vocab, [], budget, steps=budget + 4)
    assert allowed[0] == {open_id}                       # the prompt did not open it: <think> first
    for step in range(1, budget - 1):                    # a free thought that can never end the answer
        assert not allowed[step] & set(voc.eos_token_ids) and len(allowed[step]) > 1000
    assert allowed[budget - 1] == {close_id}             # the budget is spent: </think>, the last of it
    assert completion.index(close_id) <= budget - 1
    after = completion.index(close_id) + 1
    # then the grammar: compact JSON of the schema, so an object's "{" first
    assert all(tok.decode([t]).startswith("{") for t in allowed[after])


def test_a_prompt_that_opened_the_thought_is_continued_not_reopened(vocab):
    voc, _ = vocab
    open_id, close_id = voc.think_ids
    _, allowed = _walk(vocab, [open_id], budget=4, steps=4)
    assert len(allowed[0]) > 1000 and allowed[3] == {close_id}
    # a thought closed inside the prompt (Qwen3's non-thinking template) is not reopened either
    _, allowed = _walk(vocab, [open_id, close_id], budget=4, steps=1)
    assert allowed[0] == {open_id}


def test_the_model_closing_its_thought_early_starts_the_grammar_at_once(vocab):
    voc, tok = vocab
    open_id, close_id = voc.think_ids
    grammar = voc.json_schema(SCHEMA).after_thought(50)
    seq = Sequence([1, open_id], SamplingParams(max_tokens=60, grammar=grammar))
    seq.token_ids += tok("warps", add_special_tokens=False)["input_ids"] + [close_id]
    logits = torch.zeros(1, voc.size)
    GrammarMasks().apply(logits, [seq], [0])
    allowed = torch.isfinite(logits[0]).nonzero().flatten().tolist()
    assert allowed and all(tok.decode([t]).startswith("{") for t in allowed)


def test_budget_rule_and_a_vocabulary_without_think_tags():
    assert thought_budget(300) == 150 and thought_budget(1) == 2

    class NoThink:  # what after_thought needs of a vocabulary
        think_ids = None

    from qaforge.engine.structured import Grammar

    with pytest.raises(GrammarError, match="cannot think"):
        Grammar("start: /x/", NoThink()).after_thought(8)


# ---- over HTTP ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(tiny):
    srv = start_server(str(tiny), engine="native", env=FAST_ENV, args=["--max-model-len", "1024"],
                       ready_timeout=300)
    yield openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0, timeout=300)
    srv.stop()


def _ask(client, stream=False, **kwargs):
    model = client.models.list().data[0].id
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "什么是warp？"}], temperature=0,
        response_format=FORMAT, stream=stream, **kwargs)


def test_thinking_with_a_schema_returns_reasoning_then_valid_json(client):
    max_tokens = 300
    reply = _ask(client, max_tokens=max_tokens, extra_body=THINK_ON)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "stop", message
    assert getattr(message, "reasoning_content", None)        # it thought
    assert "<think>" not in message.content and "</think>" not in message.content
    jsonschema.validate(json.loads(message.content), SCHEMA)  # and answered by the schema
    # the thought stayed within its budget (half of max_tokens), so the answer had the rest
    assert reply.usage.completion_tokens <= max_tokens


def test_thinking_with_a_schema_streams_the_same_reply(client):
    whole = _ask(client, max_tokens=300, extra_body=THINK_ON).choices[0].message
    reasoning, content, reasons = "", "", []
    for chunk in _ask(client, stream=True, max_tokens=300, extra_body=THINK_ON):
        for choice in chunk.choices:
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
            content += choice.delta.content or ""
            reasons += [choice.finish_reason] if choice.finish_reason else []
    assert (reasoning, content, reasons) == (whole.reasoning_content, whole.content, ["stop"])


def test_without_thinking_the_schema_applies_from_the_first_token(client):
    reply = _ask(client, max_tokens=120)
    message = reply.choices[0].message
    assert getattr(message, "reasoning_content", None) is None
    jsonschema.validate(json.loads(message.content), SCHEMA)
    # the same schema in thinking mode really did think first: its reply is longer by the thought
    thought = _ask(client, max_tokens=120, extra_body=THINK_ON)
    assert thought.usage.completion_tokens > reply.usage.completion_tokens

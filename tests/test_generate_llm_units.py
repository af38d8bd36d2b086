"""LLM generator parts: reply parsing, quality rules, prompts, journal, and the HTTP client against
the fault server (real HTTP through the openai SDK)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qaforge.generate.filters import RULES, FilterConfig, QualityFilter, grounding_score
from qaforge.generate.journal import Journal
from qaforge.generate.llm_client import CallFailed, LLMClient, LLMOptions
from qaforge.generate.parsing import ParseError, parse_items
from qaforge.generate.prompts import DEFAULT_PROMPT_DIR, PromptError, load_prompts
from qaforge.testing.fault_llm_server import BAD_ITEMS, FaultConfig, FaultLLMServer

SOURCE = ("A warp is a group of 32 threads that the warp scheduler issues together on a streaming "
          "multiprocessor. Shared memory is an on-chip memory that threads of a thread block use to cooperate. "
          "Memory coalescing combines the global memory accesses of a warp into few DRAM transactions.")
GOOD = {"question": "What is a warp on an NVIDIA GPU?",
        "answer": "A warp is a group of 32 threads that the warp scheduler issues together on a streaming multiprocessor.",
        "topic": "warp"}

text_st = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
item_st = st.fixed_dictionaries({"question": text_st, "answer": text_st, "topic": text_st})


@settings(max_examples=60, deadline=None)
@given(items=st.lists(item_st, min_size=1, max_size=4), think=st.booleans(), fence=st.booleans())
def test_parse_roundtrip_with_think_and_fences(items, think, fence):
    body = json.dumps({"items": items}, ensure_ascii=False)
    if fence:
        body = f"Here you go:\n```json\n{body}\n```\nDone."
    if think:
        body = "<think>I should output {\"items\": []} maybe</think>\n" + body
    parsed, repaired = parse_items(body)
    assert parsed == items and not repaired


def test_parse_repairs_near_json_and_rejects_prose():
    items, repaired = parse_items('{"items": [{"question": "q?", "answer": "a", "topic": "t"},')
    assert repaired and items == [{"question": "q?", "answer": "a", "topic": "t"}]
    assert parse_items("[{'question': 'q', 'answer': 'a', 'topic': 't',}]")[0][0]["answer"] == "a"
    with pytest.raises(ParseError, match="no JSON"):
        parse_items("Sure! Here are some questions: what is a GPU?")
    with pytest.raises(ParseError, match="empty"):
        parse_items("<think>only thoughts</think>")


def test_each_quality_rule_rejects_its_bad_item():
    examples = tuple(e for p in load_prompts().by_difficulty.values() for e in p.examples)
    quality = QualityFilter(FilterConfig(few_shot_examples=examples))
    assert quality.check(GOOD, "easy", SOURCE) is None
    for rule, item in BAD_ITEMS.items():
        assert quality.check(item, "hard" if rule == "grounding" else "easy", SOURCE) == rule, rule
    assert quality.check("not an object", "easy", SOURCE) == "format"
    assert {r: quality.counts[r] for r in RULES} == {**{r: 1 for r in RULES}, "format": 2}


def test_grounding_uses_content_not_common_letters():
    assert grounding_score(GOOD["answer"], SOURCE) > 0.9
    assert grounding_score(BAD_ITEMS["grounding"]["answer"], SOURCE) < 0.2
    assert grounding_score("共享内存位于芯片上，延迟很低。", "共享内存（shared memory）位于芯片上，所以延迟很低。") > 0.8


def test_prompts_are_data_with_three_examples_and_overridable(tmp_path):
    prompts = load_prompts()
    assert all(len(p.examples) == 3 for p in prompts.by_difficulty.values())
    assert "代码" in prompts.by_difficulty["hard"].template
    custom = tmp_path / "prompts"
    shutil.copytree(DEFAULT_PROMPT_DIR, custom)
    (custom / "easy.yaml").write_text((custom / "easy.yaml").read_text(encoding="utf-8").replace("{count}", "{cnt}"),
                                      encoding="utf-8")
    with pytest.raises(PromptError, match=r"easy\.yaml: template has an unknown"):
        load_prompts(custom)


def test_journal_cuts_torn_last_line(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_text(json.dumps({"type": "call", "key": "k1", "items": []}) + "\n" + '{"type": "call", "ke')
    journal = Journal(path)
    assert set(journal.calls) == {"k1"} and journal.torn_bytes > 0
    journal.record_call("k2", {"items": [GOOD]})
    journal.close()
    assert set(Journal(path).calls) == {"k1", "k2"}


def _complete(server: FaultLLMServer, **option_overrides):
    options = LLMOptions(base_url=server.base_url, api_key="test", model="fault-llm", backoff_base_s=0.05,
                         **option_overrides)

    async def run():
        client = LLMClient(options)
        try:
            started = time.monotonic()
            result = await client.complete([{"role": "user", "content": "difficulty: easy 2 questions"}], seed=1)
            return client, result, time.monotonic() - started
        finally:
            await client.close()

    return asyncio.run(run())


def test_client_honours_retry_after():
    with FaultLLMServer(FaultConfig(rate_429=1.0, retry_after_s=1.0)) as server:
        client, result, elapsed = _complete(server)
        assert result.attempts == 2 and client.retries == 1
        assert elapsed >= 1.0                                   # backoff alone would be ~0.05 s
        assert server.stats.retry_waits and server.stats.retry_waits[0][1] >= 1.0


def test_client_times_out_then_retries_and_falls_back_from_json_schema():
    with FaultLLMServer(FaultConfig(rate_slow=1.0, slow_s=3.0, reject_response_format=True)) as server:
        client, result, elapsed = _complete(server, timeout_s=0.5)
        assert result.attempts == 2 and elapsed < 3.0
        assert client.fallbacks == ["json_schema"] and client.response_format == "json_object"
        assert server.stats.faults["slow"] == 1 and server.stats.faults["reject_response_format"] == 1


def test_client_gives_up_after_max_retries():
    with FaultLLMServer(FaultConfig(rate_500=1.0)) as server:
        with pytest.raises(CallFailed, match="gave up after 1 attempts"):
            _complete(server, max_retries=0)


def test_a_copied_few_shot_example_is_rejected_even_reworded_slightly():
    prompts = load_prompts()
    example = prompts.by_difficulty["medium"].examples[0]
    quality = QualityFilter(FilterConfig(few_shot_examples=prompts.by_difficulty["medium"].examples))
    copied = {"question": example["question"] + "？", "answer": example["answer"].replace("。", "，", 1),
              "topic": example["topic"]}
    assert quality.verdict(copied, "medium", example["answer"]) == "few_shot_copy"
    assert quality.verdict(GOOD, "easy", SOURCE) is None

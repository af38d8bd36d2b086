"""`qaforge generate --with-reasoning`: the prompt asks for a reasoning trace per answer (prompts/
reasoning.yaml), the trace is parsed and stored (qa.json `reasoning`; train lines as the answer's
<think> block; exam lines never), end to end against the fault LLM server over real HTTP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qaforge.generate.corpus import Chunk
from qaforge.generate.llm_client import LLMClient, LLMOptions, items_schema
from qaforge.generate.parsing import item_reasoning
from qaforge.generate.prompts import load_prompts
from qaforge.testing.fault_llm_server import FaultConfig, FaultLLMServer

REPO = Path(__file__).resolve().parents[1]
PROJECT_CORPUS = REPO / "data" / "corpus"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _generate(corpus: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qaforge.generate.command", "--corpus", str(corpus),
                           "--out", str(out), "--quiet", "--exam-size", "4", *extra],
                          env=_env(), capture_output=True, text=True, timeout=240)


def test_prompt_asks_for_reasoning_only_with_the_flag():
    prompts = load_prompts()
    chunk = Chunk(chunk_id="c1", chapter=4, chapter_title="Memory", section="4.1", text="共享内存是片上存储。",
                  source="ch04.md", char_start=0, char_end=10)
    plain = prompts.messages("medium", chunk, 3, [])[1]["content"]
    asked = prompts.messages("medium", chunk, 3, [], with_reasoning=True)[1]["content"]
    assert '"reasoning"' not in plain and '"reasoning"' in asked
    assert asked.startswith(plain.rstrip()) and "<source>" in asked


def test_schema_requires_reasoning_only_with_the_flag():
    schema = LLMClient(LLMOptions(base_url="http://127.0.0.1:9", with_reasoning=True))._format_arg()
    item = schema["json_schema"]["schema"]["properties"]["items"]["items"]
    assert item["required"] == ["question", "reasoning", "answer", "topic"]
    plain = LLMClient(LLMOptions(base_url="http://127.0.0.1:9"))._format_arg()
    assert "reasoning" not in plain["json_schema"]["schema"]["properties"]["items"]["items"]["properties"]
    assert plain["json_schema"] == items_schema(LLMOptions().questions_per_call)


@pytest.mark.parametrize("item,want", [
    ({"reasoning": "  Step one.\nStep two. "}, "Step one.\nStep two."),
    ({"reasoning": "<think>wrapped</think>"}, "wrapped"),
    ({"reasoning": "", "thought": "the other name"}, "the other name"),
    ({"reasoning": 42}, ""),
    ({}, ""),
])
def test_item_reasoning(item, want):
    assert item_reasoning(item) == want


def test_with_reasoning_needs_the_llm_generator(tmp_path):
    run = _generate(PROJECT_CORPUS, tmp_path / "out", "--with-reasoning")
    assert run.returncode == 2 and "--with-reasoning" in run.stderr and "--generator llm" in run.stderr


@pytest.mark.skipif(not PROJECT_CORPUS.is_dir(), reason="project corpus data/corpus not present")
def test_generate_with_reasoning_end_to_end(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from qaforge.dataset import read_records
    from qaforge.train.data import ChatEncoder

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for path in sorted(PROJECT_CORPUS.glob("ch01_*.md")):
        shutil.copy(path, corpus / path.name)
    out = tmp_path / "out"
    with FaultLLMServer(FaultConfig(rate_think=0.5, rate_fence=0.3)) as server:
        run = _generate(corpus, out, "--generator", "llm", "--api-base", server.base_url, "--api-key", "k",
                        "--model", "fault-llm", "--target-per-chapter", "10", "--with-reasoning")
    assert run.returncode == 0, run.stderr[-3000:]
    records = json.loads((out / "qa.json").read_text(encoding="utf-8"))
    assert len(records) == 10
    assert all(r["reasoning"].startswith("The source states: ") for r in records)
    train = [json.loads(x) for x in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    exam = [json.loads(x) for x in (out / "exam.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(train) == 6 and len(exam) == 4
    assert all(t["output"].startswith("<think>\nThe source states: ") for t in train)
    assert not any("<think>" in e["output"] for e in exam)
    back = read_records(out / "train.jsonl")
    assert all(r.reasoning and "<think>" not in r.answer for r in back)
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    _, stats = ChatEncoder(tok, max_seq_len=1024).encode_records(back)
    assert stats["thinking_samples"] == stats["samples"] == 6

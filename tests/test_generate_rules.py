"""The offline rules generator (qaforge/generate/rules.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from qaforge.generate.corpus import chunk_corpus, load_corpus, read_text
from qaforge.generate.rules import generate_rules_qa

REPO = Path(__file__).resolve().parents[1]
PROJECT_CORPUS = REPO / "qaforge" / "data" / "corpus"

SAMPLE = """# Chapter 4 Memory（内存）

## 4.2 共享内存（Shared Memory）

共享内存（shared memory）是指位于 SM 片上、由同一线程块中所有线程共享的一块可编程存储器。它的延迟远低于全局内存。

由于全局内存的访问延迟很高，程序员常把反复使用的数据先搬进共享内存。因此，分块算法能够显著减少全局内存流量。

通过把矩阵分成小块来减少全局内存访问次数。

```cuda
__shared__ float tile[16][16];
tile[ty][tx] = A[row * n + tx];
__syncthreads();
```

上面的代码把一个分块装入共享内存，然后用屏障同步等待所有线程。
"""


@pytest.fixture()
def sample_items(tmp_path):
    (tmp_path / "ch04_memory.md").write_text(SAMPLE, encoding="utf-8")
    chunks = chunk_corpus(load_corpus(tmp_path), tmp_path)
    return tmp_path, generate_rules_qa(chunks)


def test_rule_shapes_and_difficulties(sample_items):
    _, items = sample_items
    by_question = {qa.question: qa for _, qa in items}
    definition = by_question["什么是共享内存（shared memory）？"]
    assert definition.difficulty == "easy" and definition.rule == "definition"
    assert definition.answer.startswith("共享内存（shared memory）是指位于 SM 片上")
    why = [qa for _, qa in items if qa.rule == "why"]
    assert any(q.question == "为什么分块算法能够显著减少全局内存流量？" for q in why)
    assert all(q.difficulty == "medium" for q in why)
    how = [qa for _, qa in items if qa.rule == "how"]
    assert how and how[0].question == "如何减少全局内存访问次数？"
    code = [qa for _, qa in items if qa.rule == "code"]
    assert len(code) == 1 and code[0].difficulty == "hard" and "__syncthreads()" in code[0].answer
    assert all(qa.topic == "共享内存" for _, qa in items)


def test_answers_are_the_source_text(sample_items):
    root, items = sample_items
    text = read_text(root / "ch04_memory.md")
    for chunk, qa in items:
        assert qa.answer == text[qa.char_start:qa.char_end].strip()
        assert chunk.char_start <= qa.char_start < qa.char_end <= chunk.char_end


@pytest.mark.skipif(not PROJECT_CORPUS.is_dir(), reason="project corpus qaforge/data/corpus not present")
def test_project_corpus_yields_hundreds_deterministically():
    chunks = chunk_corpus(load_corpus(PROJECT_CORPUS), PROJECT_CORPUS)
    first = [(c.chunk_id, qa) for c, qa in generate_rules_qa(chunks)]
    again = [(c.chunk_id, qa) for c, qa in generate_rules_qa(chunks)]
    assert first == again
    assert len(first) >= 300
    difficulties = Counter(qa.difficulty for _, qa in first)
    assert min(difficulties.values()) >= 50, difficulties
    rules = Counter(qa.rule for _, qa in first)
    assert set(rules) == {"definition", "keyword", "why", "how", "code", "summary"}
    assert {c.chapter for c, _ in generate_rules_qa(chunks)} == {1, 2, 3, 4, 5, 6, 7, 13, 16, 17, 20}

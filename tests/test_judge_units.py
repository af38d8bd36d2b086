"""The judge's pieces without a server: reply parsing, rubric files, statistics, the threshold rule,
and the error messages for bad input."""

from __future__ import annotations

import json
import random

import pytest

from qaforge.judge.dataset_mode import apply_judge_threshold, load_judgements
from qaforge.judge.rubric import ReplyError, RubricError, load_rubric
from qaforge.judge.sources import InputError, load_chunk_texts, load_qa
from qaforge.judge.stats import kendall_tau_b, spearman, wilson


@pytest.fixture(scope="module")
def dataset_rubric():
    return load_rubric("dataset")


def test_parse_plain_think_fenced_and_repaired(dataset_rubric):
    good = '{"accuracy": 5, "relevance": 4, "completeness": 3, "reason": "fine"}'
    assert dataset_rubric.parse(good) == ({"scores": {"accuracy": 5, "relevance": 4, "completeness": 3},
                                           "reason": "fine"}, False)
    wrapped = "<think>{not json}</think>\nHere:\n```json\n" + good + "\n```"
    assert dataset_rubric.parse(wrapped)[0]["scores"]["relevance"] == 4
    verdict, repaired = dataset_rubric.parse('{"accuracy": 2, "relevance": "3", "completeness": 4.0, "reason": "torn",')
    assert repaired and verdict["scores"] == {"accuracy": 2, "relevance": 3, "completeness": 4}


@pytest.mark.parametrize("reply, message", [
    ("no json here", "no JSON object"),
    ('{"accuracy": 7, "relevance": 4, "completeness": 3}', "integer 1-5"),
    ('{"accuracy": 2.5, "relevance": 4, "completeness": 3}', "integer 1-5"),
    ('{"accuracy": 5, "completeness": 3}', "missing score 'relevance'"),
    ('{"accuracy": "good", "relevance": 4, "completeness": 3}', "integer 1-5"),
])
def test_parse_rejects_unusable_replies(dataset_rubric, reply, message):
    with pytest.raises(ReplyError, match=message):
        dataset_rubric.parse(reply)


def test_pairwise_choices_and_schema():
    rubric = load_rubric("pairwise")
    assert rubric.parse('{"winner": 2, "reason": "x"}')[0]["winner"] == "2"
    assert rubric.parse('{"winner": "TIE"}')[0]["winner"] == "tie"
    with pytest.raises(ReplyError, match="winner"):
        rubric.parse('{"winner": "A"}')
    assert rubric.json_schema()["schema"]["properties"]["winner"]["enum"] == ["1", "2", "tie"]
    answers = load_rubric("answers").json_schema()["schema"]
    assert answers["required"] == ["correctness", "completeness", "reason"]


def test_messages_carry_criteria_and_parts(dataset_rubric):
    messages = dataset_rubric.messages(chapter=3, chapter_title="Memory", difficulty="hard", topic="t",
                                       source="SRC-TEXT", question="Q?", answer="ANS")
    user = messages[1]["content"]
    assert "<source>\nSRC-TEXT\n</source>" in user and "Chapter 3 (Memory)" in user
    assert all(f"- {name}:" in user for name in ("accuracy", "relevance", "completeness"))


def test_bad_rubric_files_name_the_file(tmp_path):
    (tmp_path / "dataset.yaml").write_text("template: 'needs {nothing_known}'\ncriteria: {a: b}\n", encoding="utf-8")
    with pytest.raises(RubricError, match=r"dataset.yaml: template has an unknown"):
        load_rubric("dataset", tmp_path)
    (tmp_path / "answers.yaml").write_text("template: [unclosed\n", encoding="utf-8")
    with pytest.raises(RubricError, match=r"answers.yaml:\d+: invalid YAML"):
        load_rubric("answers", tmp_path)
    (tmp_path / "pairwise.yaml").write_text("template: '{question}'\nchoices: ['1', '2']\n", encoding="utf-8")
    with pytest.raises(RubricError, match="must include"):
        load_rubric("pairwise", tmp_path)


def test_statistics_match_scipy():
    stats = pytest.importorskip("scipy.stats", reason="scipy is not installed: nothing to compare against")
    rng = random.Random(3)
    for _ in range(20):
        n = rng.randint(3, 40)
        x = [rng.randint(1, 5) for _ in range(n)]          # judge scores: many ties
        y = [round(rng.random(), 2) for _ in range(n)]
        if len(set(x)) < 2 or len(set(y)) < 2:
            continue
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
        assert kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_wilson_interval_known_values():
    low, high = wilson(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    assert wilson(0, 0) == (0.0, 1.0)


def test_threshold_drops_low_pairs_keeps_unjudged(tmp_path):
    records = [{"id": "a"}, {"id": "b"}, {"id": "c"}]
    judge = tmp_path / "judge.jsonl"
    judge.write_text("\n".join(json.dumps(x) for x in [
        {"id": "a", "scores": {"accuracy": 1, "relevance": 5, "completeness": 5}, "overall": 3.6667},
        {"id": "b", "scores": {"accuracy": 4, "relevance": 2, "completeness": 2}, "overall": 2.6667}]) + "\n")
    kept, rejected = apply_judge_threshold(records, judge, 3)
    assert [r["id"] for r in kept] == ["a", "c"] and [r["id"] for r in rejected] == ["b"]
    kept, rejected = apply_judge_threshold(records, load_judgements(tmp_path), 2, score="accuracy")
    assert [r["id"] for r in rejected] == ["a"]


def test_bad_dataset_files_name_file_and_line(tmp_path):
    (tmp_path / "qa.json").write_text('[{"id": "x", "question": "q", "answer": "a", "source": {}}]')
    with pytest.raises(InputError, match=r"qa.json\[0\] \(x\): no source.chunk_id"):
        load_qa(tmp_path)
    (tmp_path / "qa.json").write_text('[{"id": "x",\n "question": }]')
    with pytest.raises(InputError, match=r"qa.json:2: invalid JSON"):
        load_qa(tmp_path)
    (tmp_path / "chunks.jsonl").write_text('{"chunk_id": "c0", "text": "ok"}\n{"chunk_id": "c1", "file": "x.md", '
                                           '"char_start": 0, "char_end": 4}\n')
    with pytest.raises(InputError, match=r"chunks.jsonl:2: .*pass --corpus"):
        load_chunk_texts(tmp_path)
    (tmp_path / "x.md").write_text("abcdefgh", encoding="utf-8")
    assert load_chunk_texts(tmp_path, corpus=tmp_path) == {"c0": "ok", "c1": "abcd"}
    (tmp_path / "judge.jsonl").write_text('{"id": "x", "overall": 3}\n{"id": "y"}\n')
    with pytest.raises(InputError, match=r"judge.jsonl:2: expected"):
        load_judgements(tmp_path)

"""Exam loading through qaforge.dataset (formats, errors naming file and line) and the contamination
check (planted duplicates)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qaforge.dataset import DatasetFormatError, read_records
from qaforge.evaluate.contamination import check_contamination, contamination_headline
from qaforge.evaluate.exam import exam_items

TRAIN = [
    {"instruction": "什么是 CUDA 中的 warp？它包含多少个线程？", "input": "", "output": "warp 是 32 个线程的调度单位。"},
    {"instruction": "全局内存合并访问的条件是什么？", "input": "", "output": "同一 warp 的线程访问连续对齐的地址。"},
    {"instruction": "解释 CUDA 动态并行的含义。", "input": "", "output": "核函数可以在设备端启动新的核函数。"},
]
EXAM = [
    {"instruction": "共享内存 bank 冲突是如何产生的？", "input": "", "output": "多个线程访问同一 bank 的不同地址。"},
    {"instruction": "线程块的最大线程数是多少？", "input": "", "output": "当前架构上是 1024 个线程。"},
]


def load_exam(path: Path, limit: int | None = None):
    return exam_items(read_records(path), limit)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def test_load_exam_reads_alpaca_and_question_answer_records(tmp_path: Path) -> None:
    rows = [{"instruction": "解释下面的代码", "input": "a[i] += 1;", "output": "自增。", "difficulty": "hard",
             "chapter": 3}, {"question": "什么是 SM？", "answer": "流式多处理器。"}]
    items = load_exam(write_jsonl(tmp_path / "exam.jsonl", rows))
    assert items[0].question == "解释下面的代码\na[i] += 1;"
    assert (items[0].difficulty, items[0].chapter) == ("hard", "3")
    assert (items[1].question, items[1].reference, items[1].difficulty, items[1].chapter) == (
        "什么是 SM？", "流式多处理器。", "unknown", "unknown")
    assert len(load_exam(tmp_path / "exam.jsonl", limit=1)) == 1


@pytest.mark.parametrize("bad_line,message", [
    ('{"instruction": "q", "output": "a"', "invalid JSON"),
    ('{"instruction": "q"}', "missing field 'output' or 'answer'"),
    ('{"instruction": 3, "output": "a"}', "'instruction' must be a string"),
    ('["q", "a"]', "expected a JSON object"),
])
def test_bad_records_name_the_file_and_line(tmp_path: Path, bad_line: str, message: str) -> None:
    path = tmp_path / "exam.jsonl"
    path.write_text('{"instruction": "q", "output": "a"}\n\n' + bad_line + "\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError) as error:
        load_exam(path)
    assert f"{path}:3" in str(error.value) and message in str(error.value)


def test_clean_split_is_reported_clean(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", TRAIN)
    result = check_contamination(load_exam(write_jsonl(tmp_path / "exam.jsonl", EXAM)), train)
    assert result["contaminated"] is False and result["overlaps"] == []
    assert contamination_headline(result).startswith("Clean")


def test_planted_exact_and_near_duplicates_are_found(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", TRAIN)
    planted_exact = dict(TRAIN[1], output="另一种说法的答案。")  # same question, different answer
    # Near duplicate: one extra character, changed punctuation and spacing — not equal after normalization.
    planted_near = dict(TRAIN[0], instruction="什么是CUDA里的 warp? 它包含多少个线程", output="完全不同的答案文本。")
    exam = load_exam(write_jsonl(tmp_path / "exam.jsonl", EXAM + [planted_exact, planted_near]))
    result = check_contamination(exam, train)
    assert result["contaminated"] is True
    assert result["contaminated_exam_items"] == 2
    kinds = {(o["exam_index"], o["train_index"], o["field"], o["kind"]) for o in result["overlaps"]}
    assert kinds == {(2, 1, "question", "exact"), (3, 0, "question", "near")}
    assert contamination_headline(result).startswith("CONTAMINATED: 2 of 4 exam items")


def test_a_copied_answer_counts_as_contamination(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", TRAIN)
    exam = load_exam(write_jsonl(tmp_path / "exam.jsonl", [dict(EXAM[0], output=TRAIN[2]["output"])]))
    result = check_contamination(exam, train)
    assert [(o["field"], o["kind"]) for o in result["overlaps"]] == [("answer", "exact")]

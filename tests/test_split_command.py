"""`qaforge split` on a user's own QA file: stratified exam, look-alikes out of train, clean by eval's check."""

from __future__ import annotations

import json
import subprocess
import sys

from qaforge.dataset import read_records


def _write_pairs(path, n=60):
    rows = []
    for i in range(n):
        chapter = None if i % 3 == 0 else 1 + i % 4  # a third without chapter, as the course project's file
        rows.append({"instruction": f"问题{i}：什么是概念{i}？为什么它在第{i % 7}种情形下重要？", "input": "",
                     "output": f"概念{i}是指一种与编号{i * 7919 % 1000}相关的机制，" + "细节" * (i % 5),
                     "difficulty": ["easy", "medium", "hard"][i % 3], **({} if chapter is None else {"chapter": chapter})})
    rows.append(dict(rows[1]))  # an exact repeat
    rows.append({**rows[2], "instruction": rows[2]["instruction"].replace("什么是", "啥是")})  # near duplicate
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")


def _split(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "qaforge", "split", *map(str, args)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)


def test_split_writes_a_clean_stratified_exam(tmp_path):
    src = tmp_path / "pairs.jsonl"
    _write_pairs(src)
    proc = _split(tmp_path, src, "--out", tmp_path / "s", "--exam-size", 12, "--seed", 3)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "Clean" in proc.stdout
    report = json.loads((tmp_path / "s" / "split_report.json").read_text(encoding="utf-8"))
    assert report["records"] == 62 and report["repeated_questions_dropped"] == 1
    train, exam = read_records(tmp_path / "s" / "train.jsonl"), read_records(tmp_path / "s" / "exam.jsonl")
    assert len(exam) == 12 and report["exam"] == 12 and report["train"] == len(train)
    assert len(train) + len(exam) + report["dropped_from_train"] == 61
    assert not {r.question for r in train} & {r.question for r in exam}
    assert {r.difficulty for r in exam} == {"easy", "medium", "hard"}
    assert any(r.chapter is None for r in exam) and any(r.chapter is not None for r in exam)
    assert report["contamination"]["contaminated"] is False
    again = _split(tmp_path, src, "--out", tmp_path / "t", "--exam-size", 12, "--seed", 3)
    assert again.returncode == 0
    assert (tmp_path / "t" / "exam.jsonl").read_bytes() == (tmp_path / "s" / "exam.jsonl").read_bytes()


def test_split_bad_input_names_the_line(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"instruction": "q", "output": "a"}\n{not json\n', encoding="utf-8")
    proc = _split(tmp_path, src, "--out", tmp_path / "s", "--exam-size", 1)
    assert proc.returncode == 2
    assert "bad.jsonl:2" in proc.stderr


def test_split_refuses_an_exam_larger_than_half(tmp_path):
    src = tmp_path / "pairs.jsonl"
    _write_pairs(src, n=10)
    proc = _split(tmp_path, src, "--out", tmp_path / "s", "--exam-size", 9)
    assert proc.returncode == 2 and "more than half" in proc.stderr

"""generate_dataset with the rules generator: files, split, idempotence, LLaMA-Factory loading."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from qaforge.generate.pipeline import generate_dataset
from qaforge.dataset import DatasetFormatError, read_records
from qaforge.generate.progress import PROGRESS_KEYS
from qaforge.textnorm import jaccard, normalize, shingles

REPO = Path(__file__).resolve().parents[1]
PROJECT_CORPUS = REPO / "qaforge" / "data" / "corpus"
DATASET_FILES = ("qa.json", "train.jsonl", "exam.jsonl", "dataset_info.json", "train_sharegpt.jsonl",
                 "exam_chatml.jsonl")

pytestmark = pytest.mark.skipif(not PROJECT_CORPUS.is_dir(), reason="project corpus qaforge/data/corpus not present")


@pytest.fixture(scope="module")
def rules_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rules")
    report = generate_dataset(PROJECT_CORPUS, out, exam_size=40, seed=0, show_progress=False, print_table=False)
    return out, report


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_report_counts_match_files(rules_run):
    out, report = rules_run
    records = json.loads((out / "qa.json").read_text(encoding="utf-8"))
    train, exam = _jsonl(out / "train.jsonl"), _jsonl(out / "exam.jsonl")
    assert report["dataset"]["total"] == len(records) >= 300
    assert report["split"] == {**report["split"], "train": len(train), "exam": 40}
    assert len(train) + len(exam) + report["split"]["dropped_from_train"] == len(records)
    assert json.loads((out / "report.json").read_text())["dataset"]["total"] == len(records)
    assert "| easy |" in (out / "report.md").read_text(encoding="utf-8")
    progress = json.loads((out / "progress.json").read_text())
    assert progress["status"] == "complete"
    assert set(progress) == set(PROGRESS_KEYS) and progress["accepted"] == len(records)
    assert sum(sum(row["accepted"].values()) for row in progress["chapters"].values()) == len(records)
    record = records[0]
    assert set(record) == {"id", "question", "answer", "difficulty", "chapter", "chapter_title", "topic",
                           "source", "generator", "model"}
    assert {"chunk_id", "char_start", "char_end"} <= set(record["source"])
    assert set(train[0]) == {"instruction", "input", "output", "difficulty", "topic", "chapter"}


def test_exam_is_stratified_by_chapter_and_difficulty(rules_run):
    out, _ = rules_run
    records = json.loads((out / "qa.json").read_text(encoding="utf-8"))
    exam = _jsonl(out / "exam.jsonl")
    population = Counter((r["chapter"], r["difficulty"]) for r in records)
    drawn = Counter((r["chapter"], r["difficulty"]) for r in exam)
    for key, size in population.items():
        expected = 40 * size / len(records)
        assert abs(drawn[key] - expected) < 1, (key, drawn[key], expected)
    assert {r["chapter"] for r in exam} == {r["chapter"] for r in records}


def test_exam_has_no_exact_or_near_duplicate_in_train(rules_run):
    """Checked by brute force over all pairs, independently of the LSH index used to build the split."""
    out, _ = rules_run
    train, exam = _jsonl(out / "train.jsonl"), _jsonl(out / "exam.jsonl")
    train_q = [(normalize(t["instruction"]), shingles(t["instruction"])) for t in train]
    train_a = [shingles(t["output"]) for t in train]
    for e in exam:
        q_norm, q_grams, a_grams = normalize(e["instruction"]), shingles(e["instruction"]), shingles(e["output"])
        assert all(q_norm != tq for tq, _ in train_q)
        assert max(jaccard(q_grams, g) for _, g in train_q) < 0.7, e["instruction"]
        assert max(jaccard(a_grams, g) for g in train_a) < 0.7, e["output"][:60]


def test_rerun_is_idempotent_and_seed_changes_exam(rules_run, tmp_path):
    out, _ = rules_run
    before = {name: (out / name).read_bytes() for name in DATASET_FILES}
    generate_dataset(PROJECT_CORPUS, out, exam_size=40, seed=0, show_progress=False, print_table=False)
    assert {name: (out / name).read_bytes() for name in DATASET_FILES} == before
    other = tmp_path / "seed1"
    generate_dataset(PROJECT_CORPUS, other, exam_size=40, seed=1, show_progress=False, print_table=False)
    assert (other / "qa.json").read_bytes() == before["qa.json"]
    assert (other / "exam.jsonl").read_bytes() != before["exam.jsonl"]


def test_every_written_file_reads_back_through_qaforge_dataset(rules_run):
    out, _ = rules_run
    qa = read_records(out / "qa.json")
    assert [r.to_dict() for r in qa] == json.loads((out / "qa.json").read_text(encoding="utf-8"))
    for split in ("train", "exam"):
        alpaca = read_records(out / f"{split}.jsonl")
        assert {r.id for r in alpaca} <= {r.id for r in qa}
        for fmt in ("sharegpt", "chatml"):
            other = read_records(out / f"{split}_{fmt}.jsonl")
            assert [(r.question, r.answer) for r in other] == [(r.question, r.answer) for r in alpaca], fmt


def test_llamafactory_loads_dataset_info(rules_run):
    """dataset_info.json + train.jsonl load with `datasets` using LLaMA-Factory's alpaca column mapping."""
    from datasets import load_dataset

    out, _ = rules_run
    info = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))
    for name in ("qaforge", "qaforge_exam"):
        entry = info[name]
        data = load_dataset("json", data_files=str(out / entry["file_name"]), split="train")
        columns = entry["columns"]
        assert {columns["prompt"], columns["query"], columns["response"]} <= set(data.column_names)
        assert all(row[columns["prompt"]] and row[columns["response"]] for row in data)
    sharegpt = info["qaforge_sharegpt"]
    data = load_dataset("json", data_files=str(out / sharegpt["file_name"]), split="train")
    turn = data[0][sharegpt["columns"]["messages"]]
    assert [t[sharegpt["tags"]["role_tag"]] for t in turn] == [sharegpt["tags"]["user_tag"],
                                                               sharegpt["tags"]["assistant_tag"]]


def test_dedup_against_earlier_run(rules_run, tmp_path):
    out, _ = rules_run
    records = json.loads((out / "qa.json").read_text(encoding="utf-8"))
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps(records[:100], ensure_ascii=False), encoding="utf-8")
    report = generate_dataset(PROJECT_CORPUS, tmp_path / "new", exam_size=20, dedup_against=[earlier],
                              show_progress=False, print_table=False)
    new_questions = {r["question"] for r in json.loads((tmp_path / "new" / "qa.json").read_text())}
    assert not new_questions & {r["question"] for r in records[:100]}
    assert report["duplicates"]["exact"] >= 100


def test_malformed_earlier_run_names_file_and_line(tmp_path):
    bad = tmp_path / "old.jsonl"
    bad.write_text('{"question": "a", "answer": "b", "difficulty": "easy", "chapter": 1}\n{oops\n')
    with pytest.raises(DatasetFormatError, match=r"old\.jsonl:2"):
        read_records(bad)
    wrong = tmp_path / "old2.jsonl"
    wrong.write_text('{"question": "a", "answer": "b", "difficulty": "trivial", "chapter": 1}\n')
    with pytest.raises(DatasetFormatError, match=r"old2\.jsonl:1: difficulty"):
        read_records(wrong)


def test_exam_too_large_is_refused(tmp_path):
    with pytest.raises(ValueError, match="more than half"):
        generate_dataset(PROJECT_CORPUS, tmp_path, exam_size=10_000, show_progress=False, print_table=False)

"""Shared inputs of tests/test_judge_*.py: a real rules-generated dataset folder (with planted wrong
answers) and an eval run folder from a real `evaluate()` with two extra systems of known quality."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT_CORPUS = REPO / "qaforge" / "data" / "corpus"
WRONG_ANSWER = ("Bananas are yellow fruit that grow in tropical plantations and taste sweet when ripe; "
                "monkeys and people both enjoy them at breakfast.")


def make_dataset(tmp: Path, chapters: str = "ch01_*.md", wrong_every: int = 5) -> tuple[Path, list[str]]:
    """(dataset folder, ids of the pairs whose answer was replaced by an unrelated one)."""
    from qaforge.generate.pipeline import generate_dataset

    corpus = tmp / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for path in sorted(PROJECT_CORPUS.glob(chapters)):
        shutil.copy(path, corpus / path.name)
    out = tmp / "dataset"
    generate_dataset(corpus, out, generator="rules", exam_size=4, show_progress=False, print_table=False)
    records = json.loads((out / "qa.json").read_text(encoding="utf-8"))
    wrong = []
    for i, record in enumerate(records):
        if i % wrong_every == 0:
            record["answer"] = WRONG_ANSWER
            wrong.append(record["id"])
    (out / "qa.json").write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    return out, wrong


def make_eval_run(tmp: Path, exam_size: int = 24) -> Path:
    """An eval run over a rules exam: question-as-answer (real evaluate()), plus "good" (the reference's
    first half) and "poor" (an unrelated sentence), scored with the project's own ROUGE-L."""
    from qaforge.evaluate.rouge import score_segmented, segment
    from qaforge.evaluate.run import evaluate
    from qaforge.generate.pipeline import generate_dataset

    corpus = tmp / "eval_corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for path in sorted(PROJECT_CORPUS.glob("ch0[34]_*.md")):
        shutil.copy(path, corpus / path.name)
    data = tmp / "eval_data"
    generate_dataset(corpus, data, generator="rules", exam_size=exam_size, show_progress=False, print_table=False)
    run = tmp / "eval_run"
    results = evaluate(data / "exam.jsonl", run, progress=False)
    for sample in results["samples"]:
        reference = sample["reference"]
        for label, text in (("poor", WRONG_ANSWER), ("good", reference[: max(20, len(reference) // 2)])):
            scores = score_segmented(text, reference, segment(text), segment(reference))
            sample["predictions"][label] = {"prediction": text, "rouge_l": scores.rouge_l}
    results["systems"] += [{"label": "poor"}, {"label": "good"}]
    (run / "eval_results.json").write_text(json.dumps(results, ensure_ascii=False, indent=2), encoding="utf-8")
    return run


def judge_command(target: Path, base_url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "qaforge.cli", "judge", str(target), "--api-base", base_url,
            "--api-key", "test-key", "--model", "fault-judge", "--quiet", *extra]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def journal_calls(folder: Path) -> list[str]:
    path = folder / "judge_journal.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["key"] for line in path.read_bytes().decode("utf-8", "replace").split("\n")
            if line.startswith('{"type": "call"') and line.endswith("}")]

"""Dataset mode: each QA pair of a dataset folder scored 1-5 against its source chunk (accuracy,
relevance to the chapter, completeness) with a one-line reason.

Writes into the dataset folder:
  judge.jsonl        one line per judged pair, the contract the review page reads:
                     {"id", "scores": {"accuracy", "relevance", "completeness"}, "overall", "reason", "judge_model"}
                     (pairs whose judging failed have no line; judge_report.json lists them)
  judge_report.json / judge_report.md   score distributions, tokens, cost, failures
  judge_journal.jsonl                   the resume journal
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from statistics import fmean
from typing import Any, Iterable

from qaforge.dataset import read_jsonl, write_jsonl
from qaforge.generate.llm_client import LLMOptions
from qaforge.judge.report import render_dataset_report
from qaforge.judge.rubric import load_rubric
from qaforge.judge.runner import Task, run_tasks, write_report
from qaforge.judge.sources import InputError, load_chunk_texts, load_qa
from qaforge.judge.stats import score_summary

JUDGE_FILE = "judge.jsonl"


def judgement_line(item_id: str, verdict: dict[str, Any], judge_model: str) -> dict[str, Any]:
    scores = verdict["scores"]
    return {"id": item_id, "scores": scores, "overall": round(fmean(scores.values()), 4),
            "reason": verdict["reason"], "judge_model": judge_model}


def judge_dataset(dataset_dir: Path, options: LLMOptions, *, corpus: Path | None = None,
                  prompt_dir: Path | None = None, limit: int | None = None, seed: int = 0,
                  retry_failed: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Judge every pair of `dataset_dir` (or the first `limit`); returns what judge_report.json holds."""
    dataset_dir = Path(dataset_dir)
    started = time.monotonic()
    records = load_qa(dataset_dir)[:limit] if limit else load_qa(dataset_dir)
    texts = load_chunk_texts(dataset_dir, corpus)
    rubric = load_rubric("dataset", prompt_dir)
    tasks = []
    for i, record in enumerate(records):
        chunk_id = record["source"]["chunk_id"]
        if chunk_id not in texts:
            raise InputError(f"{dataset_dir / 'qa.json'}[{i}] ({record['id']}): chunk {chunk_id!r} "
                             f"is not in chunks.jsonl")
        tasks.append(Task(record["id"], rubric.messages(
            chapter=record.get("chapter", ""), chapter_title=record.get("chapter_title", ""),
            difficulty=record.get("difficulty", ""), topic=record.get("topic", ""), source=texts[chunk_id],
            question=record["question"], answer=record["answer"])))
    run = run_tasks(tasks, options, rubric, dataset_dir, seed, retry_failed, show_progress)

    lines, by_chapter, by_difficulty = [], defaultdict(list), defaultdict(list)
    for record, entry in zip(records, run.entries):
        if "verdict" not in entry:
            continue
        line = judgement_line(record["id"], entry["verdict"], options.model)
        lines.append(line)
        by_chapter[str(record.get("chapter", ""))].append(line["overall"])
        by_difficulty[str(record.get("difficulty", ""))].append(line["overall"])
    write_jsonl(dataset_dir / JUDGE_FILE, lines)
    criteria = list(rubric.criteria)
    report = {
        "mode": "dataset", "dataset": str(dataset_dir), "judge_model": options.model, "items": len(records),
        "judged": len(lines), "criteria": rubric.criteria, "prompts": str(rubric.path.parent),
        "scores": score_summary([line["scores"] for line in lines], criteria),
        "by_chapter": {k: {"n": len(v), "overall_mean": fmean(v)} for k, v in by_chapter.items()},
        "by_difficulty": {k: {"n": len(v), "overall_mean": fmean(v)} for k, v in by_difficulty.items()},
        "lowest": sorted(lines, key=lambda line: (line["overall"], line["id"]))[:10],
    }
    return write_report(report, run, options, started, dataset_dir, JUDGE_FILE, "judge_report", render_dataset_report)


def load_judgements(path: Path) -> dict[str, dict[str, Any]]:
    """id -> judgement line of a judge.jsonl (a folder holding one works too)."""
    import json

    path = Path(path)
    path = path / JUDGE_FILE if path.is_dir() else path
    if not path.is_file():
        raise InputError(f"{path}: file not found (run `qaforge judge` on the dataset first)")
    out = {}
    for lineno, row in read_jsonl(path, InputError):
        if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("overall"), (int, float)):
            raise InputError(f"{path}:{lineno}: expected {{\"id\", \"overall\", ...}}")
        out[str(row["id"])] = row
    return out


def apply_judge_threshold(records: Iterable[Any], judgements: dict[str, dict] | Path, threshold: float,
                          score: str = "overall") -> tuple[list[Any], list[Any]]:
    """(kept, rejected): records whose judge `score` is below `threshold` are rejected, the rest kept.

    `records` are QA record objects (with `.id`) or dicts (with "id"); `judgements` maps id -> judge.jsonl
    line, or is a judge.jsonl path. A record the judge did not score (a failed call) is kept: the rule
    drops what the judge found bad, not what it could not read. `score` is "overall" or a criterion name.
    For generate's report: rejections["judge"] = len(rejected).
    """
    if not isinstance(judgements, dict):
        judgements = load_judgements(Path(judgements))
    kept, rejected = [], []
    for record in records:
        record_id = record["id"] if isinstance(record, dict) else record.id
        judgement = judgements.get(record_id)
        value = None if judgement is None else (
            judgement["overall"] if score == "overall" else judgement["scores"][score])
        (rejected if value is not None and value < threshold else kept).append(record)
    return kept, rejected

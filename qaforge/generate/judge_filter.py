"""`qaforge generate --judge-threshold N`: an LLM judge scores every accepted pair against its source chunk
(qaforge/judge/dataset_mode.py) and pairs whose overall score is below N are dropped, counted as the rule
"judge" in the report; the exam is drawn again from what is kept and every dataset file rewritten.
Resumable like the rest: judge.jsonl and judge_journal.jsonl sit beside the dataset, so a re-run asks the
judge only about pairs it has not scored yet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qaforge.dataset import DatasetFormatError, read_records, write_dataset
from qaforge.generate.report import dataset_stats, write_report
from qaforge.generate.split import split_exam


def drop_below_judge(out_dir: Path, options: Any, threshold: float, *, exam_size: int, seed: int,
                     near_threshold: float, name: str, show_progress: bool = True) -> dict[str, Any]:
    """Judge the dataset in `out_dir`, drop pairs scored below `threshold`, rewrite the files; the new report."""
    import json

    from qaforge.cards import write_dataset_card
    from qaforge.judge.dataset_mode import apply_judge_threshold, judge_dataset

    out_dir = Path(out_dir)
    if not 1.0 <= threshold <= 5.0:
        raise ValueError(f"--judge-threshold must be within the judge's 1-5 scale, got {threshold}")
    judged = judge_dataset(out_dir, options, show_progress=show_progress)
    records = read_records(out_dir / "qa.json")
    kept, rejected = apply_judge_threshold(records, out_dir / "judge.jsonl", threshold)
    if not kept:
        raise DatasetFormatError(f"{out_dir}: the judge scored every pair below {threshold}; nothing left to write")
    split = split_exam(kept, min(exam_size, len(kept) // 2), seed, near_threshold)
    write_dataset(out_dir, kept, split.train, split.exam, name)
    report = json.loads((out_dir / "report.json").read_text(encoding="utf-8"))
    rows = report["dataset"]["by_chapter"]
    titles = {int(n): row.get("title", "") for n, row in rows.items() if n.lstrip("-").isdigit()}
    targets = {int(n): row["target"] for n, row in rows.items() if "target" in row and n.lstrip("-").isdigit()}
    report["rejections"] = {**(report.get("rejections") or {}), "judge": len(rejected)}
    report["judge"] = {"threshold": threshold, "model": options.model, "judged": judged.get("judged"),
                       "report": str(out_dir / "judge_report.json")}
    report["dataset"] = dataset_stats(kept, titles, targets or None)
    report["split"] = {"train": len(split.train), "exam": len(split.exam),
                       "dropped_from_train": len(split.dropped_from_train),
                       "exam_by_chapter_difficulty": dataset_stats(split.exam, titles)["by_chapter"]}
    write_dataset_card(out_dir, report, [r.question + r.answer for r in kept[:200]], name=name,
                       corpus=str(report.get("corpus", "")))
    write_report(out_dir, report)
    return report

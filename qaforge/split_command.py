"""`qaforge split`: draw a held-out exam from a QA file a user already has (the original course project's
pairs, a LLaMA-Factory dataset, an export of `qaforge review`), the same way `qaforge generate` draws its own:
stratified by chapter x difficulty, and every train candidate whose question or answer is an exact or near
duplicate of an exam item dropped from train. The contamination check `qaforge eval` runs is printed at the end,
so a split this command calls clean is clean by the evaluator's own measure.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer


def split(
    data: Path = typer.Argument(..., help="QA file: alpaca/ShareGPT/messages JSONL, or a qa.json list."),
    out: Path = typer.Option(Path("runs/split"), "--out", help="Folder for train/exam files and split_report.json."),
    exam_size: int = typer.Option(193, "--exam-size", min=1, help="Questions held out in exam.jsonl."),
    seed: int = typer.Option(0, "--seed", help="Seed of the exam draw: the same file and seed, the same split."),
    name: str = typer.Option("qaforge", "--name", help="Dataset name in dataset_info.json."),
) -> None:
    """Split a QA file into train and a held-out exam (stratified, near-duplicates of the exam out of train)."""
    from rich.console import Console

    from qaforge.dataset import DatasetFormatError, read_records, write_dataset, write_json
    from qaforge.evaluate.contamination import check_contamination, contamination_headline
    from qaforge.evaluate.exam import exam_items
    from qaforge.generate.split import split_exam

    console = Console()
    try:
        records = read_records(data)
    except (DatasetFormatError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    unique, repeated = {}, 0
    for record in records:  # the same question in the same chapter twice: keep the first
        if record.id in unique:
            repeated += 1
        else:
            unique[record.id] = record
    kept = list(unique.values())
    try:
        result = split_exam(kept, exam_size, seed=seed)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--exam-size") from None
    write_dataset(out, kept, result.train, result.exam, name=name)
    contamination = check_contamination(exam_items(result.exam, None), out / "train.jsonl")
    strata = Counter(f"{'?' if r.chapter is None else r.chapter}/{r.difficulty}" for r in result.exam)
    report = {
        "source": str(data), "seed": seed, "records": len(records), "repeated_questions_dropped": repeated,
        "train": len(result.train), "exam": len(result.exam),
        "dropped_from_train": len(result.dropped_from_train),
        "dropped_examples": [{"question": r.question[:120], "why": why} for r, why in result.dropped_from_train[:20]],
        "exam_by_difficulty": dict(Counter(r.difficulty for r in result.exam)),
        "exam_by_chapter_difficulty": dict(sorted(strata.items())),
        "contamination": contamination,
    }
    write_json(out / "split_report.json", report)
    console.print(f"{len(records)} records ({repeated} repeated questions dropped): train {len(result.train)}, "
                  f"exam {len(result.exam)}, {len(result.dropped_from_train)} train candidates dropped as exam "
                  f"look-alikes -> {out}", markup=False)
    console.print(contamination_headline(contamination), style="bold red" if contamination["contaminated"] else "green")
    if contamination["contaminated"]:
        raise typer.Exit(1)

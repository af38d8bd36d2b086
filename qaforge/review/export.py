"""`qaforge review DIR --export OUT`: the dataset with people's edits applied and rejected items removed,
written by the project's dataset writer (`qaforge.dataset.write_dataset`), so OUT is a dataset
folder like any other (qa.json, train/exam JSONL in three formats, dataset_info.json).

Train/exam membership comes from DIR's train.jsonl / exam.jsonl: each alpaca line is matched to its qa.json
record by (chapter, question), because alpaca lines carry no id. Unreviewed items are kept as they are.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from qaforge.dataset import QARecord, write_dataset, write_json
from qaforge.review.items import ReviewInputError, load_review_set
from qaforge.review.journal import JOURNAL_NAME, REJECTED, read_journal


def _split_ids(path: Path, by_key: dict[tuple[int, str], str]) -> list[str]:
    if not path.is_file():
        raise ReviewInputError(f"{path}: missing (the export keeps the dataset's train/exam split)")
    ids = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key = (int(row["chapter"]), str(row["instruction"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ReviewInputError(f"{path}:{lineno}: not an alpaca line with instruction and chapter ({exc})") from exc
        if key not in by_key:
            raise ReviewInputError(f"{path}:{lineno}: question not found in qa.json (was the folder regenerated?)")
        ids.append(by_key[key])
    return ids


def export_reviewed(folder: Path, out: Path, journal: Path | None = None) -> dict[str, Any]:
    folder, out = Path(folder), Path(out)
    if out.resolve() == folder.resolve():
        raise ReviewInputError("--export must name a new folder: the reviewed dataset stays as it was")
    review = load_review_set(folder, n=1)
    state = read_journal(journal or folder / JOURNAL_NAME)
    by_key = {(r.chapter, r.question): r.id for r in review.records.values()}
    train_ids, exam_ids = (_split_ids(folder / f"{s}.jsonl", by_key) for s in ("train", "exam"))

    def reviewed(record: QARecord) -> QARecord | None:
        item = state.items.get(record.id)
        if item is None:
            return record
        if item.verdict in REJECTED:
            return None
        return dataclasses.replace(record, question=item.question or record.question,
                                   answer=item.answer or record.answer)

    kept = {i: r for i, r in ((i, reviewed(r)) for i, r in review.records.items()) if r is not None}
    files = write_dataset(out, list(kept.values()), [kept[i] for i in train_ids if i in kept],
                          [kept[i] for i in exam_ids if i in kept])
    removed = sorted(set(review.records) - set(kept))
    edited = sorted(i for i, s in state.items.items() if i in kept and (s.question or s.answer) is not None)
    summary = {"source": str(folder), "records": len(kept), "removed": removed, "edited": edited,
               "train": sum(1 for i in train_ids if i in kept), "exam": sum(1 for i in exam_ids if i in kept)}
    write_json(out / "review_export.json", summary)
    return {**summary, "files": files + ["review_export.json"]}

"""An eval run folder on the review page: per question, the reference beside each system's answer with
its ROUGE-L (and judge scores when `qaforge eval --judge` put them there), sortable worst first.

eval_results.json (qaforge/evaluate/run.py): `systems[].label` in report order and `samples[]` with
`question, reference, difficulty, chapter, predictions: {label: {prediction, rouge_l, ...}}`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qaforge.review.items import ReviewInputError

RESULTS_NAME = "eval_results.json"


def is_eval_run(folder: Path) -> bool:
    return (Path(folder) / RESULTS_NAME).is_file() and not (Path(folder) / "qa.json").is_file()


def _judge_fields(prediction: dict[str, Any]) -> dict[str, Any]:
    # The judge's field names belong to `qaforge eval --judge`; show whatever it wrote under a judge* key.
    return {k: v for k, v in prediction.items() if k.startswith("judge")}


def load_eval_run(folder: Path) -> dict[str, Any]:
    path = Path(folder) / RESULTS_NAME
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReviewInputError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    try:
        labels = [s["label"] for s in results["systems"]]
        rows = []
        for i, sample in enumerate(results["samples"]):
            answers = {}
            for label in labels:
                p = sample["predictions"][label]
                answers[label] = {"prediction": p["prediction"], "rouge_l": float(p["rouge_l"]),
                                  "judge": _judge_fields(p)}
            rows.append({"index": sample.get("index", i), "question": sample["question"],
                         "reference": sample["reference"], "difficulty": sample.get("difficulty", ""),
                         "chapter": sample.get("chapter", ""), "answers": answers})
    except (KeyError, TypeError, ValueError) as exc:
        raise ReviewInputError(f"{path}: not a qaforge eval_results.json (missing or bad field {exc})") from exc
    means = {label: next(s["metrics"].get("rouge_l") for s in results["systems"] if s["label"] == label)
             for label in labels}
    return {"data": results.get("data", ""), "labels": labels, "rows": rows, "means": means}


def sorted_rows(run: dict[str, Any], by: str | None, descending: bool = False) -> list[dict[str, Any]]:
    """Rows ordered by one system's ROUGE-L, worst first unless `descending`; `by=None` keeps exam order."""
    if by is None:
        return list(run["rows"])
    if by not in run["labels"]:
        raise ReviewInputError(f"sort: unknown system {by!r}; systems are {run['labels']}")
    return sorted(run["rows"], key=lambda r: (r["answers"][by]["rouge_l"], r["index"]), reverse=descending)

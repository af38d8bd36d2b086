"""Answer mode: each system's answer in an eval run (eval_results.json) scored 1-5 against the reference
for correctness and completeness, beside its ROUGE-L, with the rank correlation between the two.

`judge_answers(...)` is the entry point the eval command can call: it returns per-question scores
and the summary, and writes judge_answers.jsonl + judge_answers_report.json/.md into `out_dir`.
"""

from __future__ import annotations

import time
from pathlib import Path
from statistics import fmean
from typing import Any

from qaforge.dataset import write_jsonl
from qaforge.generate.llm_client import LLMOptions
from qaforge.judge.report import render_answers_report
from qaforge.judge.rubric import load_rubric
from qaforge.judge.runner import Task, run_tasks, write_report
from qaforge.judge.sources import InputError, load_eval_results, system_labels
from qaforge.judge.stats import rank_correlation, score_summary

ANSWERS_FILE = "judge_answers.jsonl"
BASELINE = "question-as-answer"      # echoing the question: judging it costs calls and says nothing new


def pick_systems(results: dict[str, Any], systems: list[str] | None, where: str) -> list[str]:
    available = system_labels(results)
    if not systems:
        return [s for s in available if s != BASELINE] or available
    unknown = [s for s in systems if s not in available]
    if unknown:
        raise InputError(f"{where}: no system {unknown[0]!r} in the eval run; it has {available}")
    return list(systems)


def resolve_results(results: dict[str, Any] | Path, out_dir: Path | None) -> tuple[dict[str, Any], Path]:
    if isinstance(results, dict):
        if out_dir is None:
            raise ValueError("out_dir is needed when results are passed as a dict")
        return results, Path(out_dir)
    run_dir = Path(results)
    return load_eval_results(run_dir), Path(out_dir) if out_dir else (run_dir if run_dir.is_dir() else run_dir.parent)


def judge_answers(results: dict[str, Any] | Path, options: LLMOptions, *, systems: list[str] | None = None,
                  out_dir: Path | None = None, prompt_dir: Path | None = None, limit: int | None = None,
                  seed: int = 0, retry_failed: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Score each system's answers against the reference. `results` is an eval run folder, an
    eval_results.json path, or the dict `evaluate()` returned. Returns
    {"per_question": {system: [{index, scores, overall, reason} | None per sample]},
     "summary": {system: {scores, rank_correlation, ...}}, ...} (also judge_answers_report.json)."""
    started = time.monotonic()
    results, out_dir = resolve_results(results, out_dir)
    samples = results["samples"][:limit] if limit else results["samples"]
    labels = pick_systems(results, systems, "--systems")
    rubric = load_rubric("answers", prompt_dir)
    tasks, slots = [], []
    for sample in samples:
        for label in labels:
            prediction = sample["predictions"].get(label)
            if prediction is None:
                continue
            tasks.append(Task(f"{sample.get('index')}/{label}", rubric.messages(
                question=sample["question"], reference=sample["reference"], answer=prediction["prediction"])))
            slots.append((sample, label, prediction))
    run = run_tasks(tasks, options, rubric, out_dir, seed, retry_failed, show_progress)

    per_question: dict[str, list] = {label: [None] * len(samples) for label in labels}
    position = {id(sample): i for i, sample in enumerate(samples)}
    lines = []
    for (sample, label, prediction), entry in zip(slots, run.entries):
        if "verdict" not in entry:
            continue
        scores = entry["verdict"]["scores"]
        row = {"index": sample.get("index"), "system": label, "scores": scores,
               "overall": round(fmean(scores.values()), 4), "reason": entry["verdict"]["reason"],
               "rouge_l": prediction.get("rouge_l"), "judge_model": options.model}
        lines.append(row)
        per_question[label][position[id(sample)]] = row
    write_jsonl(out_dir / ANSWERS_FILE, lines)

    criteria = list(rubric.criteria)
    summary = {}
    for label in labels:
        rows = [r for r in per_question[label] if r is not None]
        with_rouge = [r for r in rows if isinstance(r["rouge_l"], (int, float))]
        summary[label] = {"judged": len(rows), "scores": score_summary([r["scores"] for r in rows], criteria),
                          "rouge_l_mean": fmean(r["rouge_l"] for r in with_rouge) if with_rouge else None,
                          "rank_correlation": rank_correlation([r["overall"] for r in with_rouge],
                                                               [r["rouge_l"] for r in with_rouge])}
    pooled = [r for r in lines if isinstance(r["rouge_l"], (int, float))]
    report = {
        "mode": "answers", "eval_results": results.get("data", ""), "judge_model": options.model,
        "questions": len(samples), "systems": labels, "criteria": rubric.criteria,
        "summary": summary,
        "rank_correlation_pooled": rank_correlation([r["overall"] for r in pooled], [r["rouge_l"] for r in pooled]),
    }
    write_report(report, run, options, started, out_dir, ANSWERS_FILE, "judge_answers_report", render_answers_report)
    return {**report, "per_question": per_question}

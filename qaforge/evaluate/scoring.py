"""Scoring one system's answers: per-sample metrics, then averages, breakdowns, lengths, timings, worst cases.

Every text is segmented with jieba once and the tokens feed both the LLaMA-Factory-identical ROUGE
(`rouge.py`) and the course metric (`course_metric.py`).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from qaforge.evaluate.collect import Collection
from qaforge.evaluate.course_metric import course_rouge_l_segmented
from qaforge.evaluate.exam import ExamItem
from qaforge.evaluate.rouge import score_segmented, segment

METRICS = ("rouge_l", "course_rouge_l", "rouge_1", "rouge_2", "bleu_4")
DIFFICULTY_ORDER = {"easy": 0, "medium": 1, "hard": 2}


def _chapter_key(chapter: str) -> tuple[int, float, str]:
    try:
        return (0, float(chapter), chapter)
    except ValueError:
        return (1, 0.0, chapter)


def _mean(values: list[float]) -> float:
    return float(statistics.fmean(values)) if values else 0.0


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))])


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": _mean(values), "p50": _percentile(values, 0.5), "p90": _percentile(values, 0.9),
            "max": max(values, default=0.0)}


def score_samples(items: list[ExamItem], collection: Collection,
                  reference_tokens: list[list[str]]) -> list[dict[str, Any]]:
    """One dict per exam item: the cleaned prediction and all its scores."""
    if len(collection.answers) != len(items):
        raise ValueError(f"{collection.label}: {len(collection.answers)} answers for {len(items)} questions")
    samples = []
    for item, answer, ref_tokens in zip(items, collection.answers, reference_tokens):
        hyp_tokens = segment(answer.text)
        scores = score_segmented(answer.text, item.reference, hyp_tokens, ref_tokens)
        samples.append({
            "index": item.index, "difficulty": item.difficulty, "chapter": item.chapter,
            "prediction": answer.text,
            "rouge_l": scores.rouge_l, "rouge_1": scores.rouge_1, "rouge_2": scores.rouge_2,
            "bleu_4": scores.bleu_4, "course_rouge_l": course_rouge_l_segmented(hyp_tokens, ref_tokens),
            "output_tokens": answer.output_tokens, "latency_s": answer.latency_s,
            "finish_reason": answer.finish_reason,
        })
    return samples


def _breakdown(samples: list[dict[str, Any]], key: str, order) -> dict[str, dict[str, float]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sample in samples:
        groups[sample[key]].append(sample)
    return {name: {"n": len(group), "rouge_l": _mean([s["rouge_l"] for s in group]),
                   "course_rouge_l": _mean([s["course_rouge_l"] for s in group])}
            for name, group in sorted(groups.items(), key=lambda kv: order(kv[0]))}


def summarize(items: list[ExamItem], collection: Collection, samples: list[dict[str, Any]],
              worst_n: int = 10) -> dict[str, Any]:
    """Averages, per-difficulty and per-chapter breakdowns, length and timing stats, worst samples."""
    chars = [float(len(s["prediction"])) for s in samples]
    tokens = [float(s["output_tokens"]) for s in samples if s["output_tokens"] is not None]
    latencies = [s["latency_s"] for s in samples if s["latency_s"] is not None]
    lengths: dict[str, Any] = {
        "answer_chars": _spread(chars),
        "reference_chars_mean": _mean([float(len(x.reference)) for x in items]),
        "empty_answers": sum(1 for s in samples if not s["prediction"].strip()),
        "truncated_share": _mean([1.0 if s["finish_reason"] == "length" else 0.0 for s in samples]),
    }
    if tokens:
        lengths["output_tokens"] = _spread(tokens)
    timing: dict[str, Any] = {"wall_s": collection.wall_s}
    if collection.wall_s > 0:
        timing["output_chars_per_s"] = sum(chars) / collection.wall_s
        if len(tokens) == len(samples):
            timing["output_tokens_per_s"] = sum(tokens) / collection.wall_s
    if latencies:
        timing["latency_s"] = _spread(latencies)
    worst = sorted(samples, key=lambda s: (s["rouge_l"], s["index"]))[:worst_n]
    return {
        "label": collection.label, "source": collection.source, "details": collection.details,
        "n": len(samples),
        "metrics": {m: _mean([s[m] for s in samples]) for m in METRICS},
        "by_difficulty": _breakdown(samples, "difficulty", lambda d: (DIFFICULTY_ORDER.get(d, 9), d)),
        "by_chapter": _breakdown(samples, "chapter", _chapter_key),
        "lengths": lengths,
        "timing": timing,
        "worst": [{"index": s["index"], "question": items[s["index"]].question,
                   "reference": items[s["index"]].reference, "prediction": s["prediction"],
                   "rouge_l": s["rouge_l"], "course_rouge_l": s["course_rouge_l"]} for s in worst],
    }


def reference_tokens_of(items: list[ExamItem]) -> list[list[str]]:
    return [segment(item.reference) for item in items]

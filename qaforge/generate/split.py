"""Train/exam split: stratified by chapter x difficulty, and no exam question leaks into train.

The exam is drawn first (seeded, per stratum, largest-remainder quotas). Then every train candidate
whose question *or* answer is an exact or near duplicate of an exam item is dropped from train:
an answer copied into train leaks the exam just as a repeated question does (the evaluator's
contamination check tests both, with the same character-bigram measure).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

from qaforge.dataset import DIFFICULTIES, NEAR_DUPLICATE_THRESHOLD, QARecord
from qaforge.generate.dedup import DedupIndex


@dataclass
class Split:
    train: list[QARecord]
    exam: list[QARecord]
    dropped_from_train: list[tuple[QARecord, str]]   # (record, "question exact|near <exam id>")


def stratum_quotas(sizes: dict[tuple[int, str], int], total: int) -> dict[tuple[int, str], int]:
    """Largest-remainder allocation of `total` over strata proportional to their sizes."""
    population = sum(sizes.values())
    if population == 0 or total == 0:
        return {key: 0 for key in sizes}
    exact = {key: total * size / population for key, size in sizes.items()}
    quotas = {key: int(value) for key, value in exact.items()}
    left = total - sum(quotas.values())
    for key in sorted(sizes, key=lambda k: (-(exact[k] - quotas[k]), k))[:left]:
        quotas[key] += 1
    return quotas


def _stratum(record: QARecord) -> tuple[int, str]:
    # chapter None (unknown) sorts first; difficulty "unknown" is a stratum of its own
    return (-1 if record.chapter is None else record.chapter, record.difficulty)


def _exam_order(record: QARecord) -> tuple:
    rank = DIFFICULTIES.index(record.difficulty) if record.difficulty in DIFFICULTIES else len(DIFFICULTIES)
    return (-1 if record.chapter is None else record.chapter, rank, record.id)


def split_exam(records: list[QARecord], exam_size: int, seed: int = 0,
               threshold: float = NEAR_DUPLICATE_THRESHOLD) -> Split:
    if exam_size < 0:
        raise ValueError(f"exam_size must be >= 0, got {exam_size}")
    if exam_size > len(records) // 2:
        raise ValueError(f"exam_size {exam_size} is more than half of the {len(records)} QA pairs; "
                         f"generate more data or ask for a smaller exam")
    strata: dict[tuple[int, str], list[QARecord]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r.id):
        strata[_stratum(record)].append(record)
    quotas = stratum_quotas({k: len(v) for k, v in strata.items()}, exam_size)
    rng = random.Random(seed)
    exam: list[QARecord] = []
    for key in sorted(strata):
        pool = list(strata[key])
        rng.shuffle(pool)
        exam.extend(pool[:quotas[key]])
    exam_ids = {r.id for r in exam}
    if not exam:
        return Split(list(records), [], [])

    # Character bigrams, as `qaforge eval`'s contamination check measures: a split this stage calls
    # clean must also be clean by the evaluator's measure (bigram Jaccard >= trigram Jaccard).
    questions, answers = DedupIndex(threshold, ngram=2), DedupIndex(threshold, ngram=2)
    for record in exam:
        questions.add(record.question, record.id)
        answers.add(record.answer, record.id)
    train, dropped = [], []
    for record in records:
        if record.id in exam_ids:
            continue
        verdict = questions.check(record.question)
        field = "question"
        if verdict is None:
            verdict, field = answers.check(record.answer), "answer"
        if verdict is None:
            train.append(record)
        else:
            dropped.append((record, f"{field} {verdict[0]} duplicate of exam {verdict[1]}"))
    exam.sort(key=_exam_order)
    return Split(train, exam, dropped)

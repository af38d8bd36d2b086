"""Contamination check: does the exam ask questions the model was trained on?

Two tests per exam question against every train question:
  * exact: equal after normalization (NFKC, lower case, no whitespace or punctuation);
  * near:  character 2-gram (bigram) Jaccard similarity >= `threshold`, candidates found with MinHash LSH
           (datasketch) and then confirmed with the exact Jaccard, so no false positive survives.
Reference answers are checked the same way (an exam answer copied into train leaks it too).
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from datasketch import MinHash, MinHashLSH

from qaforge.dataset import NEAR_DUPLICATE_THRESHOLD, read_records
from qaforge.evaluate.exam import ExamItem
from qaforge.textnorm import jaccard, normalize, shingles

NUM_PERM = 64
BIGRAM = 2


# Permutations are drawn once and shared (drawing them per MinHash was half the run time), and crc32
# replaces datasketch's default sha1: a C call per shingle is plenty for candidate search, which the
# exact Jaccard then confirms.
_TEMPLATE = MinHash(num_perm=NUM_PERM, seed=1)


def _minhash(grams: set[str]) -> MinHash:
    signature = MinHash(num_perm=NUM_PERM, seed=1, hashfunc=zlib.crc32,
                        permutations=_TEMPLATE.permutations, scheme=_TEMPLATE.scheme)
    signature.update_batch([gram.encode("utf-8") for gram in grams])  # one numpy pass instead of one per shingle
    return signature


@dataclass(frozen=True)
class Overlap:
    exam_index: int
    train_index: int
    field: str          # "question" | "answer"
    kind: str           # "exact" | "near"
    similarity: float
    exam_text: str
    train_text: str


def _find_overlaps(exam_texts: list[str], train_texts: list[str], field: str,
                   threshold: float) -> list[Overlap]:
    exact_index: dict[str, int] = {}
    for i, text in enumerate(train_texts):
        exact_index.setdefault(normalize(text), i)
    train_grams = [shingles(t, BIGRAM) for t in train_texts]
    # LSH recall is only ~50 % right at its threshold; search lower and let the exact Jaccard decide.
    lsh = MinHashLSH(threshold=max(0.3, threshold - 0.2), num_perm=NUM_PERM)
    for i, grams in enumerate(train_grams):
        if grams:
            lsh.insert(str(i), _minhash(grams))
    found = []
    for e, text in enumerate(exam_texts):
        norm = normalize(text)
        if norm and norm in exact_index:
            t = exact_index[norm]
            found.append(Overlap(e, t, field, "exact", 1.0, text, train_texts[t]))
            continue
        grams = shingles(text, BIGRAM)
        if not grams:
            continue
        best = max(((jaccard(grams, train_grams[int(k)]), int(k)) for k in lsh.query(_minhash(grams))),
                   default=(0.0, -1))
        if best[0] >= threshold:
            found.append(Overlap(e, best[1], field, "near", round(best[0], 4), text, train_texts[best[1]]))
    return found


def check_contamination(exam: list[ExamItem], train_path: Path,
                        threshold: float = NEAR_DUPLICATE_THRESHOLD) -> dict:
    """Overlaps between the exam and a train file; `contaminated` is True when any question or answer leaks."""
    train = read_records(train_path)
    overlaps = (_find_overlaps([x.question for x in exam], [x.question for x in train], "question", threshold)
                + _find_overlaps([x.reference for x in exam], [x.answer for x in train], "answer", threshold))
    leaked = sorted({o.exam_index for o in overlaps})
    return {
        "train_file": str(train_path),
        "train_size": len(train),
        "exam_size": len(exam),
        "threshold": threshold,
        "contaminated": bool(overlaps),
        "contaminated_exam_items": len(leaked),
        "contaminated_share": len(leaked) / len(exam) if exam else 0.0,
        "exact_questions": sum(o.kind == "exact" and o.field == "question" for o in overlaps),
        "near_questions": sum(o.kind == "near" and o.field == "question" for o in overlaps),
        "exact_answers": sum(o.kind == "exact" and o.field == "answer" for o in overlaps),
        "near_answers": sum(o.kind == "near" and o.field == "answer" for o in overlaps),
        "overlaps": [asdict(o) for o in overlaps],
    }


def contamination_headline(result: dict | None) -> str:
    """One line for the top of a report."""
    if result is None:
        return "Contamination: NOT CHECKED (no train file given) — held-out status of the exam is unknown."
    if result["contaminated"]:
        return (f"CONTAMINATED: {result['contaminated_exam_items']} of {result['exam_size']} exam items "
                f"({result['contaminated_share']:.1%}) also appear in {result['train_file']} "
                f"({result['exact_questions']} exact / {result['near_questions']} near-duplicate questions, "
                f"{result['exact_answers']} exact / {result['near_answers']} near-duplicate answers) — "
                f"scores below overstate held-out quality.")
    return (f"Clean: no exam question or answer overlaps {result['train_file']} "
            f"({result['train_size']} records; exact + char-bigram Jaccard >= {result['threshold']}).")

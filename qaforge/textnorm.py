"""Text normalization and character n-gram similarity, one definition for the whole project.

Used by generation (dedup, exam split, filters) and evaluation (contamination check), so a split
that generation calls clean is clean by the evaluator's measure too: NFKC, lower case, no whitespace
or punctuation; character n-gram Jaccard (dedup uses 3-grams, the exam split and contamination 2-grams).
"""

from __future__ import annotations

import re
import unicodedata

_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize(text: str) -> str:
    return _NOT_WORD.sub("", unicodedata.normalize("NFKC", text).lower())


def shingles(text: str, n: int = 3) -> set[str]:
    norm = normalize(text)
    if len(norm) <= n:
        return {norm} if norm else set()
    return {norm[i:i + n] for i in range(len(norm) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0

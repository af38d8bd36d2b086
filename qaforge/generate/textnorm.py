"""Text normalization and character n-gram similarity shared by dedup, the exam split and the filters.

The definitions match `qaforge.evaluate.contamination` (NFKC, lower case, no whitespace or punctuation;
character 3-gram Jaccard), so a split that is clean here is clean for the evaluator too.
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

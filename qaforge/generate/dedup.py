"""Exact and near-duplicate detection over a growing set of texts (datasketch MinHash LSH).

The LSH index is built at a lower threshold than the one asked for (MinHash estimates are noisy: at
the nominal threshold LSH misses pairs just above it), and every candidate is confirmed with the exact
3-gram Jaccard, so neither a missed near-duplicate nor a hash collision decides the result.
Order matters and is the caller's: the first text seen wins.
"""

from __future__ import annotations

from datasketch import MinHash, MinHashLSH

from qaforge.dataset import NEAR_DUPLICATE_THRESHOLD
from qaforge.textnorm import jaccard, normalize, shingles

NUM_PERM = 128
CANDIDATE_SLACK = 0.25   # LSH candidate threshold = threshold - slack


_TEMPLATE = MinHash(num_perm=NUM_PERM, seed=1)      # generating permutations is the costly part
_PERMUTATIONS, _SCHEME = _TEMPLATE.permutations, _TEMPLATE.scheme


def _minhash(grams: set[str]) -> MinHash:
    signature = MinHash(num_perm=NUM_PERM, seed=1, permutations=_PERMUTATIONS, scheme=_SCHEME)
    signature.update_batch([g.encode("utf-8") for g in grams])
    return signature


class DedupIndex:
    """Remembers texts; `check` says whether a new text duplicates one of them."""

    def __init__(self, threshold: float = NEAR_DUPLICATE_THRESHOLD, ngram: int = 3) -> None:
        self.threshold = threshold
        self.ngram = ngram
        self._exact: dict[str, str] = {}
        self._grams: dict[str, set[str]] = {}
        self._lsh = MinHashLSH(threshold=max(0.2, threshold - CANDIDATE_SLACK), num_perm=NUM_PERM)

    def __len__(self) -> int:
        return len(self._exact)

    def check(self, text: str) -> tuple[str, str] | None:
        """("exact" | "near", key of the earlier text) when `text` duplicates one, else None."""
        norm = normalize(text)
        if norm in self._exact:
            return "exact", self._exact[norm]
        grams = shingles(text, self.ngram)
        if not grams:
            return None
        for key in self._lsh.query(_minhash(grams)):
            if jaccard(grams, self._grams[key]) >= self.threshold:
                return "near", key
        return None

    def add(self, text: str, key: str) -> None:
        norm = normalize(text)
        if norm in self._exact:
            return
        self._exact[norm] = key
        grams = shingles(text, self.ngram)
        if grams and key not in self._grams:
            self._grams[key] = grams
            self._lsh.insert(key, _minhash(grams))

    def add_if_new(self, text: str, key: str) -> tuple[str, str] | None:
        """Add unless it duplicates an earlier text; returns the duplicate verdict (None = added)."""
        verdict = self.check(text)
        if verdict is None:
            self.add(text, key)
        return verdict

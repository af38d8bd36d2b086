"""Small statistics for the judge reports: Wilson intervals, rank correlations, score distributions.

Written out (a few lines each) rather than pulling in scipy, which qaforge does not depend on; the
tests check them against scipy where it happens to be installed.
"""

from __future__ import annotations

import math
from collections import Counter
from statistics import fmean

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (sound at small n and near 0 or 1, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if successes == 0 else max(0.0, centre - half), 1.0 if successes == n else min(1.0, centre + half))


def proportion(successes: int, n: int) -> dict[str, float]:
    low, high = wilson(successes, n)
    return {"count": successes, "n": n, "rate": successes / n if n else 0.0, "ci95": [low, high]}


def _ranks(values: list[float]) -> list[float]:
    """Average ranks (1-based), ties sharing the mean of their positions."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson(x: list[float], y: list[float]) -> float | None:
    mx, my = fmean(x), fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho (Pearson over average ranks); None when either side is constant or n < 2."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} vs {len(y)} values")
    return _pearson(_ranks(x), _ranks(y)) if len(x) >= 2 else None


def kendall_tau_b(x: list[float], y: list[float]) -> float | None:
    """Kendall's tau-b (tie-corrected); O(n^2), fine for exam-sized lists."""
    if len(x) != len(y):
        raise ValueError(f"kendall: {len(x)} vs {len(y)} values")
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return None if denominator == 0 else (concordant - discordant) / denominator


def rank_correlation(judge: list[float], rouge: list[float]) -> dict[str, float | int | None]:
    return {"n": len(judge), "spearman": spearman(judge, rouge), "kendall_tau_b": kendall_tau_b(judge, rouge)}


def distribution(values: list[int], low: int = 1, high: int = 5) -> dict[str, int]:
    counts = Counter(values)
    return {str(v): counts.get(v, 0) for v in range(low, high + 1)}


def score_summary(scores: list[dict[str, int]], criteria: list[str]) -> dict[str, dict]:
    """Per criterion and for the overall mean: mean and the 1..5 histogram."""
    out = {}
    for name in criteria:
        values = [s[name] for s in scores]
        out[name] = {"mean": fmean(values) if values else None, "distribution": distribution(values)}
    overall = [fmean(s[c] for c in criteria) for s in scores]
    out["overall"] = {"mean": fmean(overall) if overall else None,
                      "distribution": distribution([int(v + 0.5) for v in overall])}
    return out

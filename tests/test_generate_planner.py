"""Planner targets (exact 50/30/20) and the exam's stratum quotas."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from qaforge.generate.corpus import Chapter
from qaforge.generate.planner import chapter_targets, difficulty_targets
from qaforge.generate.split import stratum_quotas


@given(st.integers(0, 5000))
def test_difficulty_targets_are_50_30_20_within_one(total):
    split = difficulty_targets(total)
    assert sum(split.values()) == total
    for difficulty, share in (("easy", 0.5), ("medium", 0.3), ("hard", 0.2)):
        assert abs(split[difficulty] - share * total) <= 1


def test_chapter_targets_precedence():
    chapters = [Chapter(1, "Intro"), Chapter(4, "Memory", target=33), Chapter(99, "Extra")]
    assert chapter_targets(chapters, None, 42) == {1: 60, 4: 33, 99: 42}   # PMPP table, map, default
    assert chapter_targets(chapters, {1: 7}, 42) == {1: 7, 4: 33, 99: 42}
    assert chapter_targets(chapters, {1: 7}, 42, uniform=10) == {1: 10, 4: 10, 99: 10}


@given(st.dictionaries(st.tuples(st.integers(1, 20), st.sampled_from(["easy", "medium", "hard"])),
                       st.integers(1, 300), min_size=1), st.data())
def test_stratum_quotas_sum_and_proportion(sizes, data):
    total = data.draw(st.integers(0, sum(sizes.values())))
    quotas = stratum_quotas(sizes, total)
    assert sum(quotas.values()) == total
    population = sum(sizes.values())
    assert all(abs(quotas[k] - total * n / population) < 1 for k, n in sizes.items())

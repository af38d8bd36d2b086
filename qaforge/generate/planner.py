"""Per-chapter targets and the calls needed to reach them at exactly 50/30/20 easy/medium/hard.

Every planned call is a pure function of (round, chapter, difficulty, index) and of what was accepted
before, so a resumed run plans the very same calls and finds their answers in the journal.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from qaforge.generate.corpus import Chapter, Chunk, load_chapter_map
from qaforge.dataset import DIFFICULTIES

from qaforge.paths import PMPP_CHAPTER_MAP
DIFFICULTY_SHARES = {"easy": 0.5, "medium": 0.3, "hard": 0.2}


def difficulty_targets(total: int) -> dict[str, int]:
    """Exact 50/30/20 split of a chapter's target (rounded; hard takes the remainder)."""
    easy = math.floor(total * DIFFICULTY_SHARES["easy"] + 0.5)
    medium = math.floor(total * DIFFICULTY_SHARES["medium"] + 0.5)
    return {"easy": easy, "medium": medium, "hard": max(0, total - easy - medium)}


def chapter_targets(chapters: list[Chapter], overrides: dict[int, int] | None,
                    default_target: int, uniform: int | None = None) -> dict[int, int]:
    """Target per chapter: uniform > explicit override > chapter map > the original course
    project's PMPP table (`chapter_maps/pmpp.yaml`, by number) > default."""
    pmpp_table = {e["number"]: e["target"] for e in load_chapter_map(PMPP_CHAPTER_MAP)}
    targets = {}
    for chapter in chapters:
        if uniform is not None:
            targets[chapter.number] = uniform
        elif overrides and chapter.number in overrides:
            targets[chapter.number] = overrides[chapter.number]
        elif chapter.target is not None:
            targets[chapter.number] = chapter.target
        else:
            targets[chapter.number] = pmpp_table.get(chapter.number, default_target)
    return targets


@dataclass(frozen=True)
class CallSpec:
    round: int
    chapter: int
    difficulty: str
    index: int
    chunk: Chunk
    count: int

    @property
    def seed(self) -> int:
        text = f"{self.round}:{self.chapter}:{self.difficulty}:{self.index}"
        return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)

    @property
    def order(self) -> tuple:
        return (self.round, self.chapter, DIFFICULTIES.index(self.difficulty), self.index)


def plan_round(round_no: int, deficits: dict[tuple[int, str], int], chunks_by_chapter: dict[int, list[Chunk]],
               per_call: int) -> list[CallSpec]:
    """Calls for one round: ask for ~25% more than missing in the first round, 50% more later
    (the filter and dedup reject some), spread over the chapter's chunks."""
    overshoot = 1.25 if round_no == 0 else 1.5
    specs = []
    for (chapter, difficulty), missing in sorted(deficits.items(), key=lambda kv: (kv[0][0], DIFFICULTIES.index(kv[0][1]))):
        if missing <= 0:
            continue
        chunks = chunks_by_chapter[chapter]
        wanted = math.ceil(missing * overshoot)
        calls = math.ceil(wanted / per_call)
        offset = (DIFFICULTIES.index(difficulty) * 7 + round_no * 3) % len(chunks)
        for i in range(calls):
            count = min(per_call, wanted - i * per_call)
            specs.append(CallSpec(round_no, chapter, difficulty, i, chunks[(offset + i) % len(chunks)], count))
    return specs

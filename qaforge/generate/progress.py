"""`<out>/progress.json`: where a generation run stands, one schema for both generators.

The LLM generator rewrites it after every round (so a person watching, or deciding whether to resume a
killed run, can see how far it got); the rules generator writes it once, when done. Resuming itself
reads the journal (`journal.py`), never this file.

    {"status": "running" | "complete" | "incomplete",   # incomplete: rounds ran out before the targets
     "generator": "rules" | "llm", "round": <last round run, 0-based>,
     "accepted": <QA pairs kept>, "target": <QA pairs wanted, null when the generator has no targets>,
     "calls_journaled": <LLM calls in the journal>, "journal": <its file name, null without one>,
     "elapsed_s": <seconds since the run started>,
     "chapters": {"<n>": {"target": {"easy": n, ...} | null, "accepted": {"easy": n, "medium": n, "hard": n}}}}
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

from qaforge.dataset import DIFFICULTIES, write_json
from qaforge.generate.journal import Journal

STATUSES = ("running", "complete", "incomplete")
PROGRESS_KEYS = ("status", "generator", "round", "accepted", "target", "calls_journaled", "journal", "elapsed_s",
                 "chapters")


def write_progress(out_dir: Path, status: str, generator: str, round_no: int,
                   accepted: Mapping[tuple[int, str], int], started: float,
                   wanted: Mapping[tuple[int, str], int] | None = None, journal: Journal | None = None) -> None:
    """accepted / wanted: QA pairs per (chapter, difficulty); `started` is a time.monotonic() value."""
    if status not in STATUSES:
        raise ValueError(f"progress status must be one of {STATUSES}, got {status!r}")
    numbers = sorted({chapter for chapter, _ in (wanted or accepted)} | {chapter for chapter, _ in accepted})
    chapters = {str(n): {"target": {d: wanted.get((n, d), 0) for d in DIFFICULTIES} if wanted is not None else None,
                         "accepted": {d: accepted.get((n, d), 0) for d in DIFFICULTIES}}
                for n in numbers}
    write_json(Path(out_dir) / "progress.json", {
        "status": status, "generator": generator, "round": round_no,
        "accepted": sum(accepted.values()), "target": sum(wanted.values()) if wanted is not None else None,
        "calls_journaled": len(journal.calls) if journal else 0, "journal": journal.path.name if journal else None,
        "elapsed_s": round(time.monotonic() - started, 1), "chapters": chapters})

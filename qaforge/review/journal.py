"""review_journal.jsonl: every verdict and edit, one JSON line each, appended and fsync'd before the
request returns, so a closed tab or a SIGKILLed server loses nothing that the page reported as saved.

Nothing is ever rewritten: replaying the lines in order gives the current state (the last verdict and the
last edit of each item win), and the full history stays on disk for anyone who wants to audit a review.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERDICTS = ("accurate", "inaccurate", "off-topic")
REJECTED = ("inaccurate", "off-topic")
JOURNAL_NAME = "review_journal.jsonl"


class JournalError(ValueError):
    """A journal line is malformed; the message names the file and line."""


@dataclass
class ItemState:
    verdict: str | None = None
    question: str | None = None      # edited text, None when unedited
    answer: str | None = None
    history: int = 0                  # journal lines about this item

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "question": self.question, "answer": self.answer,
                "edited": self.question is not None or self.answer is not None}


@dataclass
class ReviewState:
    items: dict[str, ItemState] = field(default_factory=dict)
    torn_tail: bool = False           # the last line was cut off by a kill mid-write (and is ignored)

    def get(self, item_id: str) -> ItemState:
        return self.items.setdefault(item_id, ItemState())

    def apply(self, entry: dict[str, Any]) -> None:
        state = self.get(entry["id"])
        state.history += 1
        if entry["kind"] == "verdict":
            state.verdict = entry["verdict"]
        elif entry["kind"] == "edit":
            if "question" in entry:
                state.question = entry["question"]
            if "answer" in entry:
                state.answer = entry["answer"]


def validate_entry(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        raise JournalError(f"{where}: expected an object with a string 'id'")
    kind = entry.get("kind")
    if kind == "verdict":
        if entry.get("verdict") not in VERDICTS + (None,):
            raise JournalError(f"{where}: verdict must be one of {VERDICTS} or null, got {entry.get('verdict')!r}")
    elif kind == "edit":
        for key in ("question", "answer"):
            if key in entry and not isinstance(entry[key], str):
                raise JournalError(f"{where}: edit field {key!r} must be a string")
    else:
        raise JournalError(f"{where}: kind must be 'verdict' or 'edit', got {kind!r}")
    return entry


def read_journal(path: Path) -> ReviewState:
    state = ReviewState()
    if not path.is_file():
        return state
    lines = path.read_text(encoding="utf-8").split("\n")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            # Only the very last line can be torn (a kill between write and newline); anything else is damage.
            if lineno == len(lines):
                state.torn_tail = True
                continue
            raise JournalError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from exc
        state.apply(validate_entry(entry, f"{path}:{lineno}"))
    return state


class Journal:
    """The open journal of one review: appends are serialized (FastAPI runs sync routes on a thread pool)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.state = read_journal(self.path)
        self._lock = threading.Lock()
        if self.state.torn_tail:
            self._terminate_torn_line()

    def _terminate_torn_line(self) -> None:
        # A torn fragment was never acknowledged (the reply follows the fsync of the whole line), so
        # cutting it off loses nothing the page showed as saved and keeps every later line parseable.
        data = self.path.read_bytes()
        with open(self.path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
            handle.flush()
            os.fsync(handle.fileno())

    def append(self, entry: dict[str, Any]) -> ItemState:
        entry = validate_entry({"ts": round(time.time(), 3), **entry}, "request")
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            self.state.apply(entry)
            return self.state.get(entry["id"])

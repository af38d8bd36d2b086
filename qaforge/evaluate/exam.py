"""Loading exam (and train) files: LLaMA-Factory alpaca JSONL, or records with question/answer keys.

Accepted per line: `{"instruction", "input", "output", "difficulty", "topic", "chapter"}` (DESIGN.md
dataset contract) or `{"question", "answer", ...}`. A non-empty `input` is appended to the instruction
on a new line, the way LLaMA-Factory builds the user turn. A `.json` file holding a list of such
records (e.g. `qa.json`) is accepted too. Every error names the file and the line (or list index).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ExamFormatError(ValueError):
    """A record of an exam/train file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class ExamItem:
    index: int          # position in the file (0-based), the stable id of the sample in reports
    question: str       # what the model is asked (instruction + optional input)
    reference: str      # the reference answer
    difficulty: str     # easy | medium | hard | unknown
    chapter: str        # chapter number as text, "unknown" when missing
    topic: str
    where: str          # "file:line", for messages


def _text_field(record: dict[str, Any], keys: tuple[str, ...], where: str) -> str:
    for key in keys:
        if key in record:
            value = record[key]
            if not isinstance(value, str):
                raise ExamFormatError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
            return value
    raise ExamFormatError(f"{where}: missing field {' or '.join(repr(k) for k in keys)}")


def parse_record(record: Any, index: int, where: str) -> ExamItem:
    if not isinstance(record, dict):
        raise ExamFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    question = _text_field(record, ("instruction", "question"), where)
    extra_input = record.get("input") or ""
    if not isinstance(extra_input, str):
        raise ExamFormatError(f"{where}: field 'input' must be a string")
    if extra_input.strip():
        question = f"{question}\n{extra_input}"
    if not question.strip():
        raise ExamFormatError(f"{where}: empty question")
    reference = _text_field(record, ("output", "answer"), where)
    chapter = record.get("chapter")
    return ExamItem(
        index=index,
        question=question,
        reference=reference,
        difficulty=str(record.get("difficulty") or "unknown"),
        chapter="unknown" if chapter in (None, "") else str(chapter),
        topic=str(record.get("topic") or ""),
        where=where,
    )


def load_exam(path: Path, limit: int | None = None) -> list[ExamItem]:
    """All records of a JSONL (or JSON list) file, in file order; `limit` keeps the first N."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exam file not found: {path}")
    text = path.read_text(encoding="utf-8")
    items: list[ExamItem] = []
    if path.suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ExamFormatError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
        if not isinstance(records, list):
            raise ExamFormatError(f"{path}: a .json exam file must hold a list of records")
        for i, record in enumerate(records):
            items.append(parse_record(record, len(items), f"{path}[{i}]"))
    else:
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ExamFormatError(f"{where}: invalid JSON: {exc.msg}") from exc
            items.append(parse_record(record, len(items), where))
    if not items:
        raise ExamFormatError(f"{path}: no records")
    return items[:limit] if limit else items

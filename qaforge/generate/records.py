"""The QA record of `qa.json` (DESIGN.md dataset contract) and its validation."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qaforge.textnorm import normalize

DIFFICULTIES = ("easy", "medium", "hard")


class DatasetFormatError(ValueError):
    """A dataset file holds a malformed record; the message names the file and the line or index."""


@dataclass
class QARecord:
    question: str
    answer: str
    difficulty: str
    chapter: int
    chapter_title: str
    topic: str
    source: dict[str, Any] = field(default_factory=dict)   # {chunk_id, char_start, char_end}
    generator: str = "rules"
    model: str = ""
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = record_id(self.chapter, self.question)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {"id": data.pop("id"), **data}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "QARecord":
        if not isinstance(data, dict):
            raise DatasetFormatError(f"{where}: expected an object, got {type(data).__name__}")
        for key in ("question", "answer", "difficulty", "chapter"):
            if key not in data:
                raise DatasetFormatError(f"{where}: missing field {key!r}")
        if data["difficulty"] not in DIFFICULTIES:
            raise DatasetFormatError(f"{where}: difficulty must be one of {DIFFICULTIES}, got {data['difficulty']!r}")
        if not isinstance(data["chapter"], int):
            raise DatasetFormatError(f"{where}: chapter must be an integer, got {data['chapter']!r}")
        return cls(question=str(data["question"]), answer=str(data["answer"]), difficulty=data["difficulty"],
                   chapter=data["chapter"], chapter_title=str(data.get("chapter_title", "")),
                   topic=str(data.get("topic", "")), source=dict(data.get("source") or {}),
                   generator=str(data.get("generator", "")), model=str(data.get("model", "")),
                   id=str(data.get("id", "")))


def record_id(chapter: int, question: str) -> str:
    """Stable id: the same question in the same chapter always gets the same id."""
    return f"ch{chapter:02d}-{hashlib.sha1(normalize(question).encode()).hexdigest()[:10]}"


def load_records(path: Path) -> list[QARecord]:
    """Records of an earlier run: `qa.json` (a list) or a JSONL file of records / alpaca lines."""
    text = Path(path).read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
        if not isinstance(data, list):
            raise DatasetFormatError(f"{path}: expected a list of QA records")
        return [QARecord.from_dict(d, f"{path}[{i}]") for i, d in enumerate(data)]
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from exc
        if isinstance(data, dict) and "instruction" in data:   # alpaca line
            data = {"question": data["instruction"], "answer": data.get("output", ""),
                    "difficulty": data.get("difficulty", "medium"), "chapter": data.get("chapter", 0),
                    "topic": data.get("topic", "")}
        records.append(QARecord.from_dict(data, f"{path}:{lineno}"))
    return records

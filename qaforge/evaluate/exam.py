"""Exam samples: dataset records (read by `qaforge.dataset.read_records`) at fixed positions.

The position is a sample's id in eval reports; chapter is shown as text ("unknown" when the record
has none), so reports group records with and without a chapter alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from qaforge.dataset import UNKNOWN, QARecord


@dataclass(frozen=True)
class ExamItem:
    index: int          # position in the file (0-based), the stable id of the sample in reports
    record: QARecord

    @property
    def question(self) -> str:
        """What the model is asked (the record's whole user turn)."""
        return self.record.question

    @property
    def reference(self) -> str:
        return self.record.answer

    @property
    def difficulty(self) -> str:
        return self.record.difficulty

    @property
    def chapter(self) -> str:
        return UNKNOWN if self.record.chapter is None else str(self.record.chapter)

    @property
    def topic(self) -> str:
        return self.record.topic


def exam_items(records: Iterable[QARecord], limit: int | None = None) -> list[ExamItem]:
    """The records in order as exam samples; `limit` keeps the first N."""
    items = [ExamItem(i, record) for i, record in enumerate(records)]
    return items[:limit] if limit else items

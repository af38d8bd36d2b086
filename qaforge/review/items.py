"""What the review page shows for a dataset folder: a stratified sample of qa.json, each item's source
chunk (text read back from the corpus through chunks.jsonl's offsets), the answer's overlapping spans in
that chunk, and the judge's scores from judge.jsonl when `qaforge judge` has run.

Dataset files are read with the project's dataset reader (`qaforge.dataset.read_records`).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qaforge.dataset import DIFFICULTIES, DatasetFormatError, QARecord, read_jsonl, read_records
from qaforge.generate.corpus import read_text
from qaforge.generate.split import stratum_quotas

HIGHLIGHT_GRAM = 4        # shared runs are found through 4-character grams (a Chinese word is 2-4 characters)
HIGHLIGHT_MIN_RUN = 6     # merged runs shorter than this are mostly chance ("gene" of "heterogeneous"/"General")


class ReviewInputError(ValueError):
    """The review folder lacks a file or holds a malformed one; the message names it."""


@dataclass
class Chunk:
    chunk_id: str
    section: str
    file: str
    char_start: int
    text: str | None          # None when the corpus file cannot be found


@dataclass
class ReviewSet:
    folder: Path
    records: dict[str, QARecord]
    sample: list[str]                                   # ids, in page order
    chunks: dict[str, Chunk] = field(default_factory=dict)
    judge: dict[str, dict[str, Any]] = field(default_factory=dict)
    corpus: Path | None = None


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for lineno, row in read_jsonl(path, ReviewInputError):
        if not isinstance(row, dict):
            raise ReviewInputError(f"{path}:{lineno}: expected a JSON object")
        rows.append((lineno, row))
    return rows


def load_judge(path: Path) -> dict[str, dict[str, Any]]:
    """judge.jsonl lines {id, scores: {accuracy, relevance, completeness}, overall, reason, judge_model}."""
    judged: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return judged
    for lineno, row in _read_jsonl(path):
        scores = row.get("scores")
        if not isinstance(row.get("id"), str) or not isinstance(scores, dict):
            raise ReviewInputError(f"{path}:{lineno}: expected {{'id': str, 'scores': {{...}}, ...}}")
        judged[row["id"]] = row          # a re-judged item: the later line wins, as in the judge's journal
    return judged


def _corpus_root(folder: Path, corpus: Path | None) -> Path | None:
    if corpus is not None:
        if not corpus.exists():
            raise ReviewInputError(f"--corpus {corpus}: no such file or folder")
        return corpus
    report = folder / "report.json"
    if not report.is_file():
        return None
    named = json.loads(report.read_text(encoding="utf-8")).get("corpus")
    # report.json names the corpus as `generate` was given it, often relative to where it ran.
    for candidate in (Path(named), folder / named) if named else ():
        if candidate.exists():
            return candidate
    return None


def load_chunks(folder: Path, corpus: Path | None) -> tuple[dict[str, Chunk], Path | None]:
    path = folder / "chunks.jsonl"
    if not path.is_file():
        return {}, corpus
    root = _corpus_root(folder, corpus)
    texts: dict[str, str | None] = {}
    chunks = {}
    for lineno, row in _read_jsonl(path):
        try:
            chunk_id, file, start, end = row["chunk_id"], row.get("file", ""), int(row["char_start"]), int(row["char_end"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ReviewInputError(f"{path}:{lineno}: needs chunk_id, char_start, char_end ({exc})") from exc
        if "text" in row:
            text = str(row["text"])
        else:
            if file not in texts:
                source = root if root is not None and root.is_file() else (root / file if root else None)
                texts[file] = read_text(source) if source is not None and source.is_file() else None
            whole = texts[file]
            text = whole[start:end] if whole is not None else None
        chunks[chunk_id] = Chunk(chunk_id, str(row.get("section", "")), file, start, text)
    return chunks, root


def stratified_sample(records: list[QARecord], n: int, seed: int) -> list[str]:
    """n ids spread over chapter x difficulty in proportion (largest remainder), seeded, in a stable order."""
    if n <= 0:
        raise ReviewInputError(f"--sample must be positive, got {n}")
    strata: dict[tuple[int, str], list[QARecord]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r.id):
        strata[(record.chapter, record.difficulty)].append(record)
    quotas = stratum_quotas({k: len(v) for k, v in strata.items()}, min(n, len(records)))
    rng = random.Random(seed)
    picked = []
    order = {d: i for i, d in enumerate(DIFFICULTIES)}
    for key in sorted(strata, key=lambda k: (k[0], order.get(k[1], 9))):
        pool = list(strata[key])
        rng.shuffle(pool)
        picked.extend(r.id for r in pool[:quotas[key]])
    return picked


def load_review_set(folder: Path, n: int = 50, seed: int = 0, corpus: Path | None = None) -> ReviewSet:
    folder = Path(folder)
    qa = folder / "qa.json"
    if not qa.is_file():
        raise ReviewInputError(f"{folder}: no qa.json (run `qaforge generate --out {folder}` first)")
    try:
        records = read_records(qa)
    except DatasetFormatError as exc:
        raise ReviewInputError(str(exc)) from exc
    if not records:
        raise ReviewInputError(f"{qa}: holds no QA records")
    by_id = {r.id: r for r in records}
    chunks, root = load_chunks(folder, Path(corpus) if corpus is not None else None)
    return ReviewSet(folder, by_id, stratified_sample(records, n, seed), chunks,
                     load_judge(folder / "judge.jsonl"), root)


def overlap_spans(chunk: str, answer: str, min_chars: int = HIGHLIGHT_GRAM,
                  min_run: int = HIGHLIGHT_MIN_RUN) -> list[tuple[int, int]]:
    """Merged [start, end) spans of `chunk`, each at least `min_run` long, made of `min_chars`-grams shared
    with `answer`.

    Matching is on raw characters (case-folded) rather than words, because the corpus is Chinese with
    English keywords and jieba would split the same phrase differently in two contexts.
    """
    folded_chunk, folded_answer = chunk.lower(), answer.lower()
    grams = {folded_answer[i:i + min_chars] for i in range(len(folded_answer) - min_chars + 1)}
    spans: list[tuple[int, int]] = []
    for i in range(len(folded_chunk) - min_chars + 1):
        gram = folded_chunk[i:i + min_chars]
        if gram.strip() and gram in grams:
            if spans and spans[-1][1] >= i:
                spans[-1] = (spans[-1][0], i + min_chars)
            else:
                spans.append((i, i + min_chars))
    return [(a, b) for a, b in spans if b - a >= min_run]


def segments(text: str, spans: list[tuple[int, int]],
             source: tuple[int, int] | None = None) -> list[tuple[str, bool, bool]]:
    """The text cut into (piece, shared with the answer, inside the record's source span) runs, for the
    template to wrap in <mark> / <span class=src> (autoescaped there)."""
    cuts = {0, len(text)}
    for start, end in spans + ([source] if source else []):
        cuts.update((max(0, min(start, len(text))), max(0, min(end, len(text)))))
    bounds = sorted(cuts)
    out = []
    for start, end in zip(bounds, bounds[1:]):
        marked = any(a <= start and end <= b for a, b in spans)
        in_source = source is not None and source[0] <= start and end <= source[1]
        out.append((text[start:end], marked, in_source))
    return out


def item_view(review: ReviewSet, item_id: str, state: dict[str, Any]) -> dict[str, Any]:
    """Everything the page and the API show about one item (edits applied to the displayed text)."""
    record = review.records[item_id]
    question = state.get("question") or record.question
    answer = state.get("answer") or record.answer
    chunk = review.chunks.get(str(record.source.get("chunk_id", "")))
    coverage = 0.0
    pieces: list[tuple[str, bool]] = []
    if chunk is not None and chunk.text is not None:
        spans = overlap_spans(chunk.text, answer)
        try:   # the record's source offsets are into the corpus file, like the chunk's own
            source = (int(record.source["char_start"]) - chunk.char_start, int(record.source["char_end"]) - chunk.char_start)
        except (KeyError, TypeError, ValueError):
            source = None
        pieces = segments(chunk.text, spans, source)
        coverage = sum(e - s for s, e in overlap_spans(answer, chunk.text)) / max(1, len(answer))
    judge = review.judge.get(item_id)
    return {**state, "id": item_id, "question": question, "answer": answer, "original_question": record.question,
            "original_answer": record.answer, "difficulty": record.difficulty, "chapter": record.chapter,
            "chapter_title": record.chapter_title, "topic": record.topic, "source": record.source,
            "chunk_id": chunk.chunk_id if chunk else record.source.get("chunk_id"),
            "chunk_section": chunk.section if chunk else "", "chunk_missing": chunk is None or chunk.text is None,
            "chunk_pieces": pieces, "highlight_share": round(min(coverage, 1.0), 3), "judge": judge}

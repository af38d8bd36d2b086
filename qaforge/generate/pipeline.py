"""`generate_dataset`: corpus -> chunks -> QA pairs (rules or LLM) -> dedup -> train/exam split -> files.

Deterministic for a seed; running again over the same out_dir rewrites the same dataset files
(the LLM generator resumes from its journal instead of asking again).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from qaforge.chat import DEFAULT_SYSTEM_PROMPT
from qaforge.dataset import NEAR_DUPLICATE_THRESHOLD, QARecord, read_records, write_dataset, write_jsonl
from qaforge.generate.corpus import Chunk, chunk_corpus, load_corpus
from qaforge.generate.dedup import DedupIndex
from qaforge.generate.progress import write_progress
from qaforge.generate.report import dataset_stats, print_summary, write_report
from qaforge.generate.split import split_exam

GENERATORS = ("rules", "llm")


def _rules_records(chunks: list[Chunk], show_progress: bool) -> tuple[list[QARecord], dict[str, int]]:
    from tqdm import tqdm

    from qaforge.generate.rules import generate_rules_qa

    records, fired = [], Counter()
    # Rules keep per-chapter memory (terms already asked), so they run over the chunks in corpus order.
    chunk_iter = tqdm(chunks, desc="rules", unit="chunk", disable=not show_progress)
    for chunk, qa in generate_rules_qa(chunk_iter):
        fired[qa.rule] += 1
        records.append(QARecord(
            question=qa.question, answer=qa.answer, difficulty=qa.difficulty, chapter=chunk.chapter,
            chapter_title=chunk.chapter_title, topic=qa.topic, generator="rules", model="",
            source={"chunk_id": chunk.chunk_id, "file": chunk.source,
                    "char_start": qa.char_start, "char_end": qa.char_end}))
    return records, dict(sorted(fired.items()))


def dedup_records(records: list[QARecord], earlier: list[QARecord],
                  threshold: float) -> tuple[list[QARecord], dict[str, int]]:
    """Drop exact and near-duplicate questions (first one wins; earlier runs win over this one)."""
    index = DedupIndex(threshold)
    for record in earlier:
        index.add(record.question, f"earlier:{record.id}")
    kept, dropped = [], {"exact": 0, "near": 0}
    for record in records:
        verdict = index.add_if_new(record.question, record.id)
        if verdict is None:
            kept.append(record)
        else:
            dropped[verdict[0]] += 1
    return kept, dropped


def generate_dataset(corpus: Path, out_dir: Path, generator: str = "rules", exam_size: int = 193,
                     seed: int = 0, *, chapter_map: Path | None = None, chunk_size: int = 3500,
                     overlap: int = 200, dataset_name: str = "qaforge",
                     near_threshold: float = NEAR_DUPLICATE_THRESHOLD, dedup_against: Sequence[Path] = (),
                     system_prompt: str = DEFAULT_SYSTEM_PROMPT, llm: Any = None,
                     show_progress: bool = True, print_table: bool = True) -> dict[str, Any]:
    """Generate a QA dataset from `corpus` into `out_dir`; returns the report dict (also report.json).

    generator: "rules" (offline, deterministic) or "llm" (then `llm` is a `LLMOptions`).
    exam_size: QA pairs held out in exam.jsonl, stratified by chapter x difficulty.
    dedup_against: qa.json / JSONL files of earlier runs whose questions must not be repeated.
    """
    if generator not in GENERATORS:
        raise ValueError(f"unknown generator {generator!r}; choose one of {GENERATORS}")
    started = time.monotonic()
    corpus, out_dir = Path(corpus), Path(out_dir)
    chapters = load_corpus(corpus, chapter_map)
    root = corpus if corpus.is_dir() else corpus.parent
    chunks = chunk_corpus(chapters, root, chunk_size, overlap)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "chunks.jsonl", ({"chunk_id": c.chunk_id, "chapter": c.chapter, "section": c.section,
                                             "file": c.source, "char_start": c.char_start,
                                             "char_end": c.char_end, "chars": len(c.text)} for c in chunks))
    earlier = [r for path in dedup_against for r in read_records(path)]
    titles = {c.number: c.title for c in chapters}
    report: dict[str, Any] = {"generator": generator, "model": "", "corpus": str(corpus), "seed": seed,
                              "chapters": len(chapters), "chunks": len(chunks)}
    targets = None
    if generator == "rules":
        records, fired = _rules_records(chunks, show_progress)
        records, duplicates = dedup_records(records, earlier, near_threshold)
        report.update(rules_fired=fired, duplicates=duplicates)
        write_progress(out_dir, "complete", "rules", 0, Counter((r.chapter, r.difficulty) for r in records), started)
    else:
        from qaforge.generate.llm_pipeline import run_llm_generation

        if llm is None:
            raise ValueError("generator 'llm' needs llm=LLMOptions(...) (base URL, model, ...)")
        result = run_llm_generation(chapters, chunks, out_dir, llm, seed=seed, earlier=earlier,
                                    near_threshold=near_threshold, show_progress=show_progress)
        records, targets = result.records, result.targets
        report.update(model=llm.model, rejections=result.rejections, duplicates=result.duplicates,
                      usage=result.usage, planner=result.planner)

    split = split_exam(records, exam_size, seed, near_threshold)
    files = write_dataset(out_dir, records, split.train, split.exam, dataset_name, system_prompt)
    report.update(
        dataset=dataset_stats(records, titles, targets),
        split={"train": len(split.train), "exam": len(split.exam),
               "dropped_from_train": len(split.dropped_from_train),
               "exam_by_chapter_difficulty": dataset_stats(split.exam, titles)["by_chapter"]},
        wall_time_s=round(time.monotonic() - started, 3),
        files={"dataset": files, "report": str(out_dir / "report.json")},
    )
    from qaforge.cards import write_dataset_card  # a Hugging Face dataset card beside the files it describes

    report["files"]["card"] = str(write_dataset_card(out_dir, report, [r.question + r.answer for r in records[:200]],
                                                     name=dataset_name, corpus=str(corpus)))
    write_report(out_dir, report)
    if print_table:
        print_summary(report)
    return report


def load_report(out_dir: Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / "report.json").read_text(encoding="utf-8"))

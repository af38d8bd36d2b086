"""Reading what the judge reads: a dataset folder (qa.json + the chunk texts) and an eval run folder
(eval_results.json). Bad input raises InputError naming the file and the line or index.

chunks.jsonl lists each chunk's file and character span; when a line carries no "text", the chunk's
text is cut from the corpus file again (the corpus folder comes from report.json, or --corpus).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qaforge.dataset import read_jsonl


class InputError(ValueError):
    """A file the judge reads is missing or malformed; the message names it."""


def _read_corpus_text(path: Path) -> str:
    # the generator's own reader: PDF extraction must match generation exactly, or the character spans
    # point at other text
    from qaforge.generate.corpus.files import read_text

    return read_text(path)


def load_json(path: Path) -> Any:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc


def load_qa(dataset_dir: Path) -> list[dict[str, Any]]:
    path = Path(dataset_dir) / "qa.json"
    data = load_json(path)
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a list of QA records")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise InputError(f"{path}[{i}]: expected an object, got {type(record).__name__}")
        for key in ("id", "question", "answer"):
            if not isinstance(record.get(key), str):
                raise InputError(f"{path}[{i}]: missing or non-string field {key!r}")
        if not isinstance((record.get("source") or {}).get("chunk_id"), str):
            raise InputError(f"{path}[{i}] ({record['id']}): no source.chunk_id, so no text to judge it against")
    return data


def _corpus_root(dataset_dir: Path, corpus: Path | None) -> Path | None:
    if corpus is not None:
        corpus = Path(corpus)
        return corpus if corpus.is_dir() else corpus.parent
    report = Path(dataset_dir) / "report.json"
    if not report.is_file():
        return None
    named = load_json(report).get("corpus")
    if not named:
        return None
    for candidate in (Path(named), Path(dataset_dir) / named):
        if candidate.exists():
            return candidate if candidate.is_dir() else candidate.parent
    return None


def load_chunk_texts(dataset_dir: Path, corpus: Path | None = None) -> dict[str, str]:
    """chunk_id -> text, from chunks.jsonl ("text" when present, else the corpus file's span)."""
    path = Path(dataset_dir) / "chunks.jsonl"
    if not path.is_file():
        raise InputError(f"{path}: file not found (written by `qaforge generate`)")
    root = None
    files: dict[Path, str] = {}
    texts = {}
    for lineno, row in read_jsonl(path, InputError):
        if not isinstance(row, dict) or not isinstance(row.get("chunk_id"), str):
            raise InputError(f"{path}:{lineno}: expected an object with a 'chunk_id'")
        if isinstance(row.get("text"), str):
            texts[row["chunk_id"]] = row["text"]
            continue
        root = root or _corpus_root(dataset_dir, corpus)
        if root is None:
            raise InputError(f"{path}:{lineno}: the line has no 'text' and the corpus folder is unknown "
                             f"(report.json names none that exists here); pass --corpus")
        source = root / str(row.get("file", ""))
        if source not in files:
            if not source.is_file():
                raise InputError(f"{path}:{lineno}: corpus file {source} not found; pass --corpus")
            files[source] = _read_corpus_text(source)
        texts[row["chunk_id"]] = files[source][int(row["char_start"]):int(row["char_end"])]
    return texts


def load_eval_results(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "eval_results.json" if Path(run_dir).is_dir() else Path(run_dir)
    results = load_json(path)
    if not isinstance(results, dict) or not isinstance(results.get("samples"), list):
        raise InputError(f"{path}: expected eval_results.json with a 'samples' list (written by `qaforge eval`)")
    for i, sample in enumerate(results["samples"]):
        if not isinstance(sample, dict) or not {"question", "reference", "predictions"} <= set(sample):
            raise InputError(f"{path}: samples[{i}] lacks question, reference or predictions")
    return results


def system_labels(results: dict[str, Any]) -> list[str]:
    """Systems in report order (eval_results.json 'systems'), else as the first sample lists them."""
    labels = [s["label"] for s in results.get("systems", []) if "label" in s]
    if labels or not results["samples"]:
        return labels
    return list(results["samples"][0]["predictions"])

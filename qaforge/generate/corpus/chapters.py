"""Find the chapters of a textbook.

Chapters are found, in this order of preference:
  1. a chapter map file (YAML or JSON list of {number, title, target, files}) given by the user;
  2. `# Chapter N Title` / `# 第N章 标题` headings inside the files;
  3. `chNN_` / `chapterNN` file names;
  4. a folder layout: every top-level sub-folder (plus its `<folder>.md` index page) is one chapter;
  5. otherwise every file is one chapter, in sorted order.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from qaforge.generate.corpus.files import (DEFAULT_EXCLUDE, CorpusError, body_start, first_heading,
                                           inside_code, list_source_files, read_text)

_CHAPTER_HEADING = re.compile(
    r"^#\s+(?:Chapter\s+(?P<n1>\d+)[.:：]?\s*(?P<t1>.*)|第\s*(?P<n2>\d+)\s*章\s*(?P<t2>.*))\s*$",
    re.IGNORECASE | re.MULTILINE)
# The same headings in text extracted from a PDF (or plain .txt): no '#', often upper case, sometimes a
# running page header. A line of its own, short, with no sentence punctuation at its end.
_PLAIN_CHAPTER_HEADING = re.compile(
    r"^[ \t]*(?:CHAPTER|Chapter)[ \t]+(?P<n1>\d{1,3})\b[ \t]*[.:：]?[ \t]*(?P<t1>[^\n]{0,90}?)[ \t]*$"
    r"|^[ \t]*第[ \t]*(?P<n2>\d{1,3})[ \t]*章[ \t]*(?P<t2>[^\n]{0,60}?)[ \t]*$",
    re.MULTILINE)
_CHAPTER_FILENAME = re.compile(r"^(?:ch|chapter|chap)[_\- ]?(\d+)", re.IGNORECASE)


@dataclass
class Chapter:
    number: int
    title: str
    # (path, start, end): the character spans of source files that make up this chapter.
    spans: list[tuple[Path, int, int]] = field(default_factory=list)
    target: int | None = None          # wanted QA pairs, from a chapter map


def _pretty(stem: str) -> str:
    return re.sub(r"[_\-]+", " ", _CHAPTER_FILENAME.sub("", stem)).strip().title() or stem


def _chapters_from_headings(files: list[Path], texts: dict[Path, str]) -> list[Chapter] | None:
    found: dict[int, Chapter] = {}
    for path in files:
        text = texts[path]
        heads = list(_CHAPTER_HEADING.finditer(text))
        heads = [h for h in heads if not inside_code(text, h.start())]
        if not heads and path.suffix.lower() not in (".md", ".markdown"):
            heads = _plain_chapter_heads(text)
        if not heads:
            continue
        for i, head in enumerate(heads):
            number = int(head.group("n1") or head.group("n2"))
            title = (head.group("t1") or head.group("t2") or "").strip()
            end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
            chapter = found.setdefault(number, Chapter(number, title))
            chapter.title = chapter.title or title  # "CHAPTER 2" alone, its title on a later header
            chapter.spans.append((path, head.start(), end))
    return [found[n] for n in sorted(found)] if found else None


def _plain_chapter_heads(text: str) -> list[re.Match]:
    """Chapter headings of PDF-extracted or plain text, without table-of-contents and prose lines.

    Dropped: lines ending in sentence punctuation ("Chapter 3 shows that ... ."), lines ending in a
    page number or dot leader (table of contents: "Chapter 4 Memory ........ 71"), and a chapter number
    smaller than one already seen (a back reference, or the TOC before the body restarts at 1 — then
    the body's sequence wins because it is the longer run).
    """
    heads = []
    for match in _PLAIN_CHAPTER_HEADING.finditer(text):
        title = (match.group("t1") or match.group("t2") or "").strip()
        if re.search(r"[。.!?！？;；,，]$", title) and not re.search(r"\.\.\.$", title):
            continue
        if re.search(r"(?:\.{2,}|…+|\s)\s*\d{1,4}$", title) or re.fullmatch(r"\d{1,4}", title):
            continue  # TOC entry or "Chapter 4  71"
        heads.append(match)
    # keep the longest run of non-decreasing chapter numbers (the body; running headers repeat a number)
    runs: list[list[re.Match]] = []
    for head in heads:
        number = int(head.group("n1") or head.group("n2"))
        if runs and number >= int(runs[-1][-1].group("n1") or runs[-1][-1].group("n2")):
            runs[-1].append(head)
        else:
            runs.append([head])
    return max(runs, key=lambda run: len({int(h.group("n1") or h.group("n2")) for h in run}), default=[])


def _chapters_from_filenames(files: list[Path], texts: dict[Path, str]) -> list[Chapter] | None:
    numbered = {p: _CHAPTER_FILENAME.match(p.stem) for p in files}
    if not all(numbered.values()):
        return None
    found: dict[int, Chapter] = {}
    for path in files:
        number = int(numbered[path].group(1))
        start, fm_title = body_start(texts[path])
        title = fm_title or first_heading(texts[path][start:]) or _pretty(path.stem)
        found.setdefault(number, Chapter(number, title)).spans.append((path, start, len(texts[path])))
    return [found[n] for n in sorted(found)]


def _chapters_from_layout(root: Path, files: list[Path], texts: dict[Path, str]) -> list[Chapter]:
    """Top-level folders (with their `<folder>.md` index page) are chapters; loose files too."""
    groups: dict[str, list[Path]] = {}
    for path in files:
        rel = path.relative_to(root) if root.is_dir() else Path(path.name)
        key = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        groups.setdefault(key, []).append(path)
    chapters = []
    for number, key in enumerate(sorted(groups), start=1):
        paths = sorted(groups[key], key=lambda p: (p.parent != root, str(p)))  # index page first
        index_title = ""
        for p in paths:
            if p.parent == root:
                _, index_title = body_start(texts[p])
                index_title = index_title or first_heading(texts[p])
        chapter = Chapter(number, index_title or _pretty(key))
        for p in paths:
            start, _ = body_start(texts[p])
            chapter.spans.append((p, start, len(texts[p])))
        chapters.append(chapter)
    return chapters


def load_chapter_map(path: Path) -> list[dict]:
    """Chapter map: a YAML/JSON list of {number, title, target?, files?} (files: glob patterns)."""
    try:
        raw = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            import yaml
            data = yaml.safe_load(raw)
    except (OSError, ValueError) as exc:
        line = getattr(exc, "lineno", None) or getattr(getattr(exc, "problem_mark", None), "line", None)
        raise CorpusError(f"{path}{f':{line}' if line else ''}: cannot read chapter map: {exc}") from exc
    except Exception as exc:  # yaml.YAMLError carries the line in problem_mark
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise CorpusError(f"{where}: cannot read chapter map: {exc}") from exc
    if isinstance(data, dict) and "chapters" in data:
        data = data["chapters"]
    if not isinstance(data, list):
        raise CorpusError(f"{path}: chapter map must be a list of {{number, title, target}} entries")
    entries = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("number"), int):
            raise CorpusError(f"{path}: entry {i + 1} needs an integer 'number' (got {entry!r})")
        target = entry.get("target")
        if target is not None and (not isinstance(target, int) or target < 0):
            raise CorpusError(f"{path}: entry {i + 1} (chapter {entry['number']}): 'target' must be an int >= 0")
        files = entry.get("files", [])
        entries.append({"number": entry["number"], "title": str(entry.get("title", "")), "target": target,
                        "files": [files] if isinstance(files, str) else list(files)})
    return entries


def _apply_chapter_map(entries: list[dict], root: Path, files: list[Path], texts: dict[Path, str],
                       detected: list[Chapter]) -> list[Chapter]:
    by_number = {c.number: c for c in detected}
    chapters = []
    for entry in entries:
        if entry["files"]:
            chapter = Chapter(entry["number"], entry["title"])
            for p in files:
                rel = str(p.relative_to(root)) if root.is_dir() else p.name
                if any(fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(p.name, pat) for pat in entry["files"]):
                    start, _ = body_start(texts[p])
                    chapter.spans.append((p, start, len(texts[p])))
        elif entry["number"] in by_number:
            chapter = by_number[entry["number"]]
            chapter.title = entry["title"] or chapter.title
        else:
            continue  # mapped chapter absent from this corpus: nothing to generate from
        chapter.target = entry["target"]
        if chapter.spans:
            chapters.append(chapter)
    return chapters


def load_corpus(corpus: Path, chapter_map: Path | None = None,
                exclude: tuple[str, ...] = DEFAULT_EXCLUDE) -> list[Chapter]:
    """Chapters of a corpus folder or file, sorted by chapter number."""
    corpus = Path(corpus)
    files = list_source_files(corpus, exclude)
    texts = {p: read_text(p) for p in files}
    root = corpus if corpus.is_dir() else corpus.parent
    detected = (_chapters_from_headings(files, texts) or _chapters_from_filenames(files, texts)
                or _chapters_from_layout(root, files, texts))
    if chapter_map is not None:
        detected = _apply_chapter_map(load_chapter_map(Path(chapter_map)), root, files, texts, detected)
        if not detected:
            raise CorpusError(f"{chapter_map}: no chapter of the map matches a file of {corpus}")
    return detected


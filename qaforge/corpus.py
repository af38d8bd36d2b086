"""Load a textbook (Markdown / text, PDF optional), find its chapters, and cut it into chunks.

Chapters are found, in this order of preference:
  1. a chapter map file (YAML or JSON list of {number, title, target, files}) given by the user;
  2. `# Chapter N Title` / `# 第N章 标题` headings inside the files;
  3. `chNN_` / `chapterNN` file names;
  4. a folder layout: every top-level sub-folder (plus its `<folder>.md` index page) is one chapter;
  5. otherwise every file is one chapter, in sorted order.

Chunks are cut on semantic boundaries (heading > paragraph > sentence, Chinese 。！？ included) and never
inside a fenced code block, a Markdown table or a `$$` formula. Every chunk keeps its chapter, the
section heading it sits under and its character offsets into the source file, so a generated QA pair
can always be traced back to the text it came from.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

TEXT_SUFFIXES = (".md", ".markdown", ".txt")
# Pages that describe the book rather than teach its subject.
DEFAULT_EXCLUDE = ("readme*", "license*", "contributors*", "changelog*", "authors*")

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
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
# A sentence ends at Chinese or Western end punctuation (plus closing quotes/brackets).
_SENTENCE_END = re.compile(r"[。！？!?；;]+[”’」』）)\"']*|(?<![\d.])\.(?=\s|$)[”’\"')]*")
# A list item starts a new paragraph even without a blank line before it.
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)、])\s+")


class CorpusError(ValueError):
    """The corpus or the chapter map cannot be read; the message names the file (and line)."""


@dataclass
class Chapter:
    number: int
    title: str
    # (path, start, end): the character spans of source files that make up this chapter.
    spans: list[tuple[Path, int, int]] = field(default_factory=list)
    target: int | None = None          # wanted QA pairs, from a chapter map


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    chapter: int
    chapter_title: str
    section: str                       # heading the chunk starts under ("" if none)
    source: str                        # path of the source file, relative to the corpus root
    char_start: int                    # offsets into the decoded text of the source file
    char_end: int
    text: str
    overlap_chars: int = 0             # leading characters repeated from the previous chunk


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def read_text(path: Path) -> str:
    """Decoded text of one source file (PDF through pypdf when installed)."""
    if path.suffix.lower() == ".pdf":
        try:
            from pypdf import PdfReader
        except ImportError as exc:  # optional extra
            raise CorpusError(f"{path}: reading PDF needs the optional 'pypdf' package") from exc
        return "\n\n".join(unwrap_pdf_lines(page.extract_text() or "") for page in PdfReader(path).pages)
    try:
        return path.read_text(encoding="utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 text ({exc})") from exc


_CJK = re.compile(r"[\u3000-\u30ff\u3400-\u9fff\uff00-\uffef]")


def unwrap_pdf_lines(page: str) -> str:
    """Join the lines a PDF's layout wrapped inside a paragraph; keep headings and paragraph ends.

    A line is a wrapped one when it is nearly as wide as the page's widest line and does not end a
    sentence; it is joined to the next with a space (Latin) or nothing (CJK on either side), and
    "memo-" + "ry" becomes "memory". Short lines (headings, a paragraph's last line) keep their break.
    """
    lines = [line.rstrip() for line in page.replace("\r\n", "\n").split("\n")]

    def width(line: str) -> int:  # a CJK character is about two Latin characters wide on the page
        return len(line) + len(_CJK.findall(line))

    widest = max((width(line) for line in lines), default=0)
    out: list[str] = []
    for i, line in enumerate(lines):
        out.append(line)
        nxt = lines[i + 1].lstrip() if i + 1 < len(lines) else ""
        wrapped = (line and nxt and width(line) >= 0.75 * widest
                   and not re.search(r"[。！？.!?:：;；]$", line))
        if i + 1 == len(lines):
            break
        if not wrapped:
            out.append("\n")
        elif line.endswith("-") and nxt[:1].islower():
            out[-1] = line[:-1]
        elif _CJK.match(line[-1]) or _CJK.match(nxt[0]):
            pass
        else:
            out.append(" ")
    return "".join(out)


def list_source_files(corpus: Path, exclude: tuple[str, ...] = DEFAULT_EXCLUDE) -> list[Path]:
    if not corpus.exists():
        raise CorpusError(f"{corpus}: corpus path does not exist")
    if corpus.is_file():
        return [corpus]
    suffixes = TEXT_SUFFIXES + (".pdf",)
    files = [p for p in sorted(corpus.rglob("*")) if p.is_file() and p.suffix.lower() in suffixes
             and not any(fnmatch.fnmatch(p.name.lower(), pat) for pat in exclude)]
    if not files:
        raise CorpusError(f"{corpus}: no .md/.txt/.pdf files found")
    return files


def _body_start(text: str) -> tuple[int, str]:
    """Where the content starts (after YAML front matter) and the front matter's title."""
    match = _FRONT_MATTER.match(text)
    if not match:
        return 0, ""
    title = ""
    for line in match.group(1).splitlines():
        if line.lower().startswith("title:"):
            title = line.split(":", 1)[1].strip().strip("'\"")
    return match.end(), title


def _first_heading(text: str) -> str:
    for line in text.splitlines():
        m = _HEADING.match(line)
        if m:
            return m.group(2).strip()
    return ""


def _pretty(stem: str) -> str:
    return re.sub(r"[_\-]+", " ", _CHAPTER_FILENAME.sub("", stem)).strip().title() or stem


def _chapters_from_headings(files: list[Path], texts: dict[Path, str]) -> list[Chapter] | None:
    found: dict[int, Chapter] = {}
    for path in files:
        text = texts[path]
        heads = list(_CHAPTER_HEADING.finditer(text))
        heads = [h for h in heads if not _inside_code(text, h.start())]
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
        start, fm_title = _body_start(texts[path])
        title = fm_title or _first_heading(texts[path][start:]) or _pretty(path.stem)
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
                _, index_title = _body_start(texts[p])
                index_title = index_title or _first_heading(texts[p])
        chapter = Chapter(number, index_title or _pretty(key))
        for p in paths:
            start, _ = _body_start(texts[p])
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
                    start, _ = _body_start(texts[p])
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


# ---------------------------------------------------------------------------------------------
# Chunking
# ---------------------------------------------------------------------------------------------

def _inside_code(text: str, pos: int) -> bool:
    return text.count("\n```", 0, pos) % 2 == 1 or text.startswith("```") and text.count("```", 0, pos) % 2 == 1


@dataclass
class TextUnit:
    """One heading line, one atomic block (code / table / formula) or one sentence of a paragraph."""
    start: int
    end: int
    strength: int        # how good a cut *before* this unit is: 3 heading, 2 paragraph/block, 1 sentence
    heading: str = ""    # set when the unit is a heading line
    atomic: bool = False  # code block, table, formula: never split, never used as overlap
    block: str = ""      # "code" | "table" | "formula" for atomic units


def _sentence_units(text: str, start: int, end: int, first_strength: int) -> list[TextUnit]:
    units, pos = [], start
    for m in _SENTENCE_END.finditer(text, start, end):
        if m.end() - pos > 0 and text[pos:m.end()].strip():
            units.append(TextUnit(pos, m.end(), 1))
            pos = m.end()
    if text[pos:end].strip():
        units.append(TextUnit(pos, end, 1))
    if units:
        units[0].strength = first_strength
    return units


def text_units(text: str, start: int = 0, end: int | None = None) -> list[TextUnit]:
    """Split text[start:end] into atomic blocks, headings and sentences, with cut strengths."""
    end = len(text) if end is None else end
    units: list[TextUnit] = []
    lines = text[start:end].splitlines(keepends=True)
    pos, i = start, 0
    para_start = None

    def flush_paragraph(upto: int) -> None:
        nonlocal para_start
        if para_start is not None:
            units.extend(_sentence_units(text, para_start, upto, 2))
            para_start = None

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        block_end = None
        if stripped.startswith("```") or stripped.startswith("~~~"):
            fence = stripped[:3]
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith(fence):
                j += 1
            block_end = min(j + 1, len(lines))
        elif stripped.startswith("$$"):
            j = i if stripped.count("$$") >= 2 and len(stripped) > 2 else i + 1
            while j < len(lines) and j > i and "$$" not in lines[j]:
                j += 1
            block_end = min(j + 1, len(lines))
        elif stripped.startswith("|"):
            j = i
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            block_end = j
        if block_end is not None:
            flush_paragraph(pos)
            length = sum(len(x) for x in lines[i:block_end])
            kind = "table" if stripped.startswith("|") else "formula" if stripped.startswith("$$") else "code"
            units.append(TextUnit(pos, pos + length, 2, atomic=True, block=kind))
            pos += length
            i = block_end
            continue
        heading = _HEADING.match(line.rstrip("\n"))
        if heading:
            flush_paragraph(pos)
            units.append(TextUnit(pos, pos + len(line), 3, heading=heading.group(2).strip()))
        elif not stripped:
            flush_paragraph(pos)
        elif para_start is None:
            para_start = pos
        elif _LIST_ITEM.match(line):
            flush_paragraph(pos)
            para_start = pos
        pos += len(line)
        i += 1
    flush_paragraph(pos)
    return units


def _hard_split(unit: TextUnit, size: int) -> list[TextUnit]:
    """A sentence longer than a whole chunk (rare): cut it at fixed width."""
    if unit.atomic or unit.end - unit.start <= size:
        return [unit]
    return [TextUnit(s, min(s + size, unit.end), unit.strength if s == unit.start else 0)
            for s in range(unit.start, unit.end, size)]


def chunk_chapter(chapter: Chapter, root: Path, chunk_size: int = 3500, overlap: int = 200,
                  texts: dict[Path, str] | None = None) -> list[Chunk]:
    """Cut one chapter into chunks of about `chunk_size` characters on the best boundaries."""
    if chunk_size < 200:
        raise ValueError(f"chunk_size must be >= 200 characters, got {chunk_size}")
    if not 0 <= overlap < chunk_size // 2:
        raise ValueError(f"overlap must be in [0, chunk_size/2), got {overlap}")
    chunks: list[Chunk] = []
    for path, span_start, span_end in chapter.spans:
        text = texts[path] if texts is not None else read_text(path)
        rel = str(path.relative_to(root)) if root.is_dir() and path.is_relative_to(root) else path.name
        _, fm_title = _body_start(text)
        units = [piece for u in text_units(text, span_start, span_end) for piece in _hard_split(u, chunk_size)]
        units = [u for u in units if text[u.start:u.end].strip()]
        headings = [(u.start, u.heading) for u in units if u.heading]
        i = 0
        prev_end = None
        while i < len(units):
            j = i + 1
            while j < len(units) and units[j].end - units[i].start <= chunk_size:
                j += 1
            if j < len(units):
                # Cut at the strongest boundary in the second half of the chunk (latest among equals).
                lo = units[i].start + chunk_size // 2
                candidates = [k for k in range(i + 1, j) if units[k].start >= lo] or list(range(i + 1, j))
                if candidates:
                    best = max(units[k].strength for k in candidates)
                    j = max(k for k in candidates if units[k].strength == best)
            start, end = units[i].start, units[j - 1].end
            # The section is the heading in force where the chunk's first content (not heading) starts.
            content_start = next((u.start for u in units[i:j] if not u.heading), start)
            section = next((h for pos, h in reversed(headings) if pos <= content_start), fm_title)
            overlap_chars = max(0, prev_end - start) if prev_end is not None else 0
            chunks.append(Chunk(
                chunk_id=f"ch{chapter.number:02d}-{len(chunks):03d}", chapter=chapter.number,
                chapter_title=chapter.title, section=section, source=rel, char_start=start,
                char_end=end, text=text[start:end], overlap_chars=overlap_chars))
            prev_end = end
            if j >= len(units):
                break
            # Next chunk repeats trailing sentences of this one (up to `overlap` chars), never a block.
            k = j
            while (overlap and k - 1 > i and not units[k - 1].atomic and not units[k - 1].heading
                   and end - units[k - 1].start <= overlap):
                k -= 1
            i = k
    return chunks


def chunk_corpus(chapters: list[Chapter], root: Path, chunk_size: int = 3500,
                 overlap: int = 200) -> list[Chunk]:
    texts: dict[Path, str] = {}
    for chapter in chapters:
        for path, _, _ in chapter.spans:
            if path not in texts:
                texts[path] = read_text(path)
    root = Path(root)
    return [c for ch in chapters for c in chunk_chapter(ch, root, chunk_size, overlap, texts)]


def split_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) spans of the sentences of a plain paragraph (Chinese and Western punctuation)."""
    return [(u.start, u.end) for u in _sentence_units(text, 0, len(text), 1)]

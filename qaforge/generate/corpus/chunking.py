"""Cutting chapters into chunks on semantic boundaries (heading > paragraph > sentence, Chinese 。！？
included), never inside a fenced code block, a Markdown table or a `$$` formula. Every chunk keeps its
chapter, the section heading it sits under and its character offsets into the source file, so a
generated QA pair can always be traced back to the text it came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from qaforge.generate.corpus.chapters import Chapter
from qaforge.generate.corpus.files import HEADING, body_start, read_text

# A sentence ends at Chinese or Western end punctuation (plus closing quotes/brackets).
_SENTENCE_END = re.compile(r"[。！？!?；;]+[”’」』）)\"']*|(?<![\d.])\.(?=\s|$)[”’\"')]*")
# A list item starts a new paragraph even without a blank line before it.
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)、])\s+")


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
        heading = HEADING.match(line.rstrip("\n"))
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
        _, fm_title = body_start(text)
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

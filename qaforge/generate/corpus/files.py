"""Reading a textbook's source files: Markdown / text, PDF through the optional pypdf, front matter."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

TEXT_SUFFIXES = (".md", ".markdown", ".txt")
# Pages that describe the book rather than teach its subject.
DEFAULT_EXCLUDE = ("readme*", "license*", "contributors*", "changelog*", "authors*")

_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


class CorpusError(ValueError):
    """The corpus or the chapter map cannot be read; the message names the file (and line)."""


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


def body_start(text: str) -> tuple[int, str]:
    """Where the content starts (after YAML front matter) and the front matter's title."""
    match = _FRONT_MATTER.match(text)
    if not match:
        return 0, ""
    title = ""
    for line in match.group(1).splitlines():
        if line.lower().startswith("title:"):
            title = line.split(":", 1)[1].strip().strip("'\"")
    return match.end(), title


def first_heading(text: str) -> str:
    for line in text.splitlines():
        m = HEADING.match(line)
        if m:
            return m.group(2).strip()
    return ""


def inside_code(text: str, pos: int) -> bool:
    """Whether `pos` lies inside a fenced code block of Markdown `text`."""
    return text.count("\n```", 0, pos) % 2 == 1 or text.startswith("```") and text.count("```", 0, pos) % 2 == 1

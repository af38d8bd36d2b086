"""Offline, deterministic QA generation from textbook sentences (no LLM).

Each rule turns a recognisable sentence shape into a question and answers it with the source
sentences themselves, so every answer is grounded by construction:
  definition  "X是指…" / "所谓X，是指…" / "…称为X" / "X is a …"      → "什么是X？"           easy
  keyword     "中文（English）" first mention                     → "…起什么作用？"        easy/medium
  why         "因此/所以 C" / "由于 A，C" / "C because …"            → "为什么C？"           medium
  how         "通过 A 来 B"                                       → "如何B？"             medium
  code        a fenced code block with its lead-in sentence       → "请给出…的代码实现"     hard
  summary     the opening sentences of a section                  → "请概述「…」的主要内容"  hard
The question templates live in `rules_templates.yaml` next to this file (data, not code).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable
from functools import lru_cache
from pathlib import Path

import yaml

from qaforge.generate.corpus import Chunk, text_units

from qaforge.paths import RULES_TEMPLATES_FILE as TEMPLATES_FILE

_CLAUSE_STOP = "，,。；;：:！？!?"
_CJK = re.compile(r"[\u4e00-\u9fff]")
_TERM_LEAD = re.compile(r"^(?:而|但|这里的|这里|其中|例如|即|也就是|所谓|一个|这种|这类|这个|该|本章|本节|在|对于|所以|因此)+")
_DEF_PATTERNS = [
    re.compile(r"所谓(?P<term>[^，。；：]{2,30}?)[，,]?(?:就)?(?:是指|指的是|是)"),
    re.compile(r"(?P<term>[^，。；：、,（]{2,30}?(?:（[^）]{1,40}）)?)(?:是指|指的是|被定义为|定义为)"),
]
_CALLED = re.compile(r"(?:称为|称作|叫做)(?P<term>[^，。；：或,]{2,40})")
_EN_DEF = re.compile(r"^(?:(?P<article>An?|The) +)?(?P<term>[A-Za-z][\w\-]*(?: +[\w\-]+){0,4}?) +"
                     r"(?P<verb>is|are|refers to) +(?:an?|the) +")
_EN_NOT_TERMS = {"this", "that", "it", "these", "those", "there", "here", "but", "and", "so", "which", "what",
                 "one", "each", "such", "they", "we", "you"}
_THEREFORE = re.compile(r"^(?:因此|所以|于是|因而)[，,]?(?P<c>[^。！？!?]+)")
_BECAUSE = re.compile(r"^(?:由于|因为)(?P<r>[^，,]+)[，,](?:.*?(?:所以|因此|因而)[，,]?)?(?P<c>[^。！？!?]+)")
_BY_MEANS = re.compile(r"(?:^通过(?P<m1>[^，。；]{2,40}?)[，,]|通过(?P<m2>[^，。；]{2,40}?)(?:来|以|从而))"
                       r"(?P<g>[^。！？!?；，,]{4,40})")
_EN_BECAUSE = re.compile(r"^(?P<c>[^.]{10,120}?)\s+because\s+(?P<r>.+)$")
# Part-of-speech flags (jieba) that end a noun phrase when walking backwards from a keyword.
_PHRASE_BREAK_FLAGS = ("v", "p", "r", "c", "d", "u", "m", "f", "t", "y", "e", "o", "z")
_PHRASE_BREAK_WORDS = {"所谓", "称为", "叫做", "即"}
_KEYWORD = re.compile(r"(?P<zh>[\u4e00-\u9fff]{2,12})（(?P<en>[A-Za-z][A-Za-z0-9 \-'/.]{1,40})）")
_SECTION_NUMBER = re.compile(r"^\s*(?:Chapter\s+\d+\s*|[\d.]+\s*)")
_EN_QUESTION_TITLE = re.compile(r"^(?:What|Who)\s+(?:is|are)\s+(?:an?\s+|the\s+)?", re.IGNORECASE)
_PRONOUN_START = re.compile(r"^(?:这|它|此|该|其|他们|它们|这些)")


@lru_cache(maxsize=4)
def load_templates(path: Path = TEMPLATES_FILE) -> dict[str, dict[str, str]]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "zh" not in data or "en" not in data:
        raise ValueError(f"{path}: expected 'zh' and 'en' template maps")
    return data


@dataclass(frozen=True)
class RuleQA:
    question: str
    answer: str
    difficulty: str
    rule: str
    topic: str
    char_start: int     # offsets into the source file
    char_end: int


def short_topic(section: str) -> str:
    """'1.2 面向延迟的设计（Latency-Oriented Design）' -> '面向延迟的设计'."""
    topic = _EN_QUESTION_TITLE.sub("", _SECTION_NUMBER.sub("", section).strip()).rstrip("?？ ")
    head = re.split(r"[（(]", topic, maxsplit=1)[0].strip()
    return head or topic


def _clean_clause(clause: str, limit: int = 40) -> str:
    clause = clause.strip().strip("，,：:；;")
    clause = re.sub(r"^(?:就|才|也|便|可以|能够|来|以)", "", clause)
    if clause.count("（") > clause.count("）"):
        clause = clause[:clause.rindex("（")]
    if len(clause) > limit:
        first = re.split(f"[{_CLAUSE_STOP}]", clause)[0]
        clause = first if len(first) >= 6 else ""
    return clause


def _clean_term(term: str) -> str:
    main, paren, note = term.partition("（")
    main = re.split(r"[，,：:；;。]", main)[-1]
    main = _TERM_LEAD.sub("", main.strip()).strip(" \"'“”「」")
    if not 2 <= len(main) <= 30 or _PRONOUN_START.match(main) or "）" in main:
        return ""
    return main + paren + note if note.endswith("）") else main


def _noun_phrase_tail(text: str, max_chars: int = 8) -> str:
    """'它能根据张量描述符' -> '张量描述符': the noun phrase that ends `text` (jieba POS tags)."""
    import jieba
    import jieba.posseg

    jieba.setLogLevel(60)
    words = list(jieba.posseg.cut(text))
    phrase = ""
    for i, w in enumerate(reversed(words)):
        if i > 0 and (w.flag.startswith(_PHRASE_BREAK_FLAGS) and w.flag != "vn"
                      or w.word in _PHRASE_BREAK_WORDS or len(phrase) + len(w.word) > max_chars):
            break
        phrase = w.word + phrase
    return phrase


def _is_chinese(text: str) -> bool:
    return len(_CJK.findall(text)) * 4 > len(text)


def _join(text: str, spans: list[tuple[int, int]]) -> tuple[str, int, int]:
    start, end = spans[0][0], spans[-1][1]
    return text[start:end].strip(), start, end


class _ChunkRules:
    """Applies the rules to one chunk; remembers what it already asked about."""

    def __init__(self, chunk: Chunk, asked_terms: set[str], summarized: set[str]) -> None:
        self.chunk = chunk
        self.asked_terms = asked_terms
        self.summarized = summarized
        self.items: list[RuleQA] = []

    def emit(self, rule: str, difficulty: str, question: str, spans: list[tuple[int, int]], topic: str) -> None:
        answer, start, end = _join(self.chunk.text, spans)
        if len(question) < 6 or len(answer) < 20 or question.rstrip("？?") in answer[:len(question)]:
            return
        base = self.chunk.char_start
        self.items.append(RuleQA(question, answer, difficulty, rule, topic, base + start, base + end))

    def run(self) -> list[RuleQA]:
        chunk, text = self.chunk, self.chunk.text
        units = text_units(text)
        section = chunk.section
        paragraph: list[tuple[int, int]] = []
        keywords_left = 6
        lang = "zh" if _is_chinese(text) else "en"
        templates = load_templates()[lang]

        def sentences_window(idx: int, before: int, after: int) -> list[tuple[int, int]]:
            return paragraph[max(0, idx - before): idx + after + 1]

        def close_paragraph() -> None:
            nonlocal keywords_left
            for idx, (s, e) in enumerate(paragraph):
                if e <= chunk.overlap_chars:
                    continue        # already seen as the tail of the previous chunk
                sentence = text[s:e].strip()
                topic = short_topic(section) or chunk.chapter_title
                keywords_left -= self.sentence_rules(sentence, idx, topic, templates, sentences_window,
                                                     keywords_left > 0)
            paragraph.clear()

        section_opening: list[tuple[int, int]] = []
        # A chunk that opens a file (no overlap) opens its section too (e.g. a glossary page).
        summary_for = section if chunk.overlap_chars == 0 and section and section not in self.summarized else None
        for pos, unit in enumerate(units):
            if unit.heading:
                close_paragraph()
                self.flush_summary(summary_for, section_opening, templates)
                section, section_opening = unit.heading, []
                summary_for = section if unit.start >= chunk.overlap_chars and section not in self.summarized else None
                continue
            if unit.atomic:
                close_paragraph()
                if unit.block == "code" and unit.start >= chunk.overlap_chars:
                    self.code_rule(units, pos, section, templates)
                continue
            if unit.strength >= 2:
                close_paragraph()
            paragraph.append((unit.start, unit.end))
            if summary_for and len(section_opening) < 3:
                section_opening.append((unit.start, unit.end))
        close_paragraph()
        self.flush_summary(summary_for, section_opening, templates)
        return self.items

    def flush_summary(self, section: str | None, opening: list[tuple[int, int]], templates: dict) -> None:
        if not section or len(opening) < 2:
            return
        self.summarized.add(section)
        topic = short_topic(section)
        self.emit("summary", "hard", templates["summary"].format(topic=topic), opening, topic)

    def code_rule(self, units: list, pos: int, section: str, templates: dict) -> None:
        code = units[pos]
        lead = units[pos - 1] if pos > 0 and not units[pos - 1].atomic and not units[pos - 1].heading else None
        after = units[pos + 1] if pos + 1 < len(units) and not units[pos + 1].atomic and not units[pos + 1].heading else None
        spans = ([(lead.start, lead.end)] if lead else []) + [(code.start, code.end)]
        spans += [(after.start, after.end)] if after else []
        topic = short_topic(section) or self.chunk.chapter_title
        self.emit("code", "hard", templates["code"].format(topic=topic), spans, topic)

    def sentence_rules(self, sentence: str, idx: int, topic: str, templates: dict, window, keyword_ok: bool) -> int:
        """Apply the sentence rules; returns how many keyword questions were used."""
        asked = False
        for pattern in _DEF_PATTERNS:
            m = pattern.search(sentence)
            term = _clean_term(m.group("term")) if m else ""
            if term and term not in self.asked_terms:
                self.asked_terms.add(term)
                spans = window(idx, 0, 1 if len(sentence) < 60 else 0)
                self.emit("definition", "easy", templates["definition"].format(term=term), spans, topic)
                asked = True
                break
        m = _CALLED.search(sentence)
        if not asked and m:
            term = _clean_term(m.group("term"))
            if term and term not in self.asked_terms:
                self.asked_terms.add(term)
                self.emit("definition", "easy", templates["definition"].format(term=term), window(idx, 1, 0), topic)
                asked = True
        m = _EN_DEF.match(sentence)
        if not asked and m and (m.group("article") or m.group("term")[0].isupper()):
            term = m.group("term").strip()
            if (term.lower() not in self.asked_terms and len(term) >= 3
                    and term.split()[0].lower() not in _EN_NOT_TERMS):
                self.asked_terms.add(term.lower())
                q = templates["definition_plural" if m.group("verb") == "are" else "definition"].format(term=term)
                self.emit("definition", "easy", q, window(idx, 0, 1 if len(sentence) < 120 else 0), topic)
                asked = True

        for rule, pattern, before, template in (("why", _THEREFORE, 1, "why"), ("why", _BECAUSE, 0, "why"),
                                                 ("how", _BY_MEANS, 0, "how"), ("why", _EN_BECAUSE, 0, "why")):
            m = pattern.search(sentence)
            if not m:
                continue
            clause = _clean_clause(m.group("g") if rule == "how" else m.group("c"), 120 if template == "why" and pattern is _EN_BECAUSE else 40)
            if len(clause) < 4:
                continue
            if pattern is _EN_BECAUSE:
                clause = clause[0].lower() + clause[1:]
            q = templates[template].format(clause=clause)
            if _PRONOUN_START.match(clause):
                q = templates["in_topic"].format(topic=topic, question=q)
            self.emit(rule, "medium", q, window(idx, before, 0 if before else 1), topic)
            asked = True
            break

        if asked or not keyword_ok:
            return 0
        m = _KEYWORD.search(sentence)
        zh = _noun_phrase_tail(m.group("zh")) if m else ""
        if m and len(zh) >= 2 and m.group("en").lower() not in self.asked_terms:
            self.asked_terms.add(m.group("en").lower())
            spans = window(idx, 0, 1)
            difficulty = "medium" if len(spans) > 1 else "easy"
            q = templates["keyword"].format(topic=topic, zh=zh, en=m.group("en"))
            self.emit("keyword", difficulty, q, spans, topic)
            return 1
        return 0


def generate_rules_qa(chunks: Iterable[Chunk]) -> list[tuple[Chunk, RuleQA]]:
    """All rule-based QA pairs of the chunks, in corpus order (deterministic)."""
    out: list[tuple[Chunk, RuleQA]] = []
    asked_by_chapter: dict[int, set[str]] = {}
    summarized_by_chapter: dict[int, set[str]] = {}
    for chunk in chunks:
        asked = asked_by_chapter.setdefault(chunk.chapter, set())
        summarized = summarized_by_chapter.setdefault(chunk.chapter, set())
        out.extend((chunk, qa) for qa in _ChunkRules(chunk, asked, summarized).run())
    return out

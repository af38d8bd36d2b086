"""Quality filter for LLM-generated QA items. Each rule has a name and a counter; the first rule an
item breaks rejects it. Rule order puts cheap structural checks first.

  format          question/answer/topic are non-empty strings
  few_shot_copy   the question or answer is a (near) copy of one of the prompt's few-shot examples: small
                  models (seen with Qwen2.5-0.5B) hand the examples back, and they pass every other rule
                  because the examples are well-formed, on topic and often grounded in any chapter
  same_as_question  the answer merely repeats the question
  leakage         refusal or prompt-leak phrases (data file, e.g. "根据上文", "as an AI")
  length          question and answer lengths within per-difficulty bounds
  terminology     the item uses at least one domain keyword (data file per domain)
  grounding       enough of the answer's Chinese character bigrams / English word bigrams occur in the
                  source chunk
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from qaforge.dataset import NEAR_DUPLICATE_THRESHOLD
from qaforge.textnorm import jaccard, normalize, shingles

from qaforge.paths import DOMAINS_DIR
DEFAULT_KEYWORDS = DOMAINS_DIR / "gpu_cuda_keywords.txt"
DEFAULT_LEAKAGE = DOMAINS_DIR / "leakage_phrases.txt"
RULES = ("format", "few_shot_copy", "same_as_question", "leakage", "length", "terminology", "grounding")

# The original course project aimed at average answers of easy 120, medium 180, hard 250 characters
# (its data came out longer); the bounds leave room on both sides.
DEFAULT_ANSWER_BOUNDS = {"easy": (30, 500), "medium": (50, 800), "hard": (80, 2000)}
QUESTION_BOUNDS = (6, 300)


def read_phrase_list(path: Path) -> list[str]:
    """One entry a line; blank lines and lines starting with # are ignored."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: list file not found")
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


_CJK_RUN = re.compile(r"[\u4e00-\u9fff]+")
_WORD = re.compile(r"[a-z0-9_]+")


def grounding_grams(text: str) -> set[str]:
    """Chinese character bigrams plus English word bigrams: both are specific enough that overlap
    means shared content (English character bigrams would match any English text)."""
    text = unicodedata.normalize("NFKC", text).lower()
    grams = {run[i:i + 2] for run in _CJK_RUN.findall(text) for i in range(len(run) - 1)}
    words = _WORD.findall(_CJK_RUN.sub(" ", text))
    grams |= {f"{a} {b}" for a, b in zip(words, words[1:])}
    return grams


@lru_cache(maxsize=256)
def _source_grams(source: str) -> frozenset[str]:
    return frozenset(grounding_grams(source))     # the same chunk backs many items: compute once


def grounding_score(answer: str, source: str) -> float:
    """Share of the answer's grams (CJK char bigrams, English word bigrams) found in the source text."""
    grams = grounding_grams(answer)
    return len(grams & _source_grams(source)) / len(grams) if grams else 0.0


@dataclass
class FilterConfig:
    keywords_file: Path = DEFAULT_KEYWORDS
    leakage_file: Path = DEFAULT_LEAKAGE
    grounding_threshold: float = 0.3
    answer_bounds: dict[str, tuple[int, int]] = field(default_factory=lambda: dict(DEFAULT_ANSWER_BOUNDS))
    few_shot_examples: tuple[dict, ...] = ()   # the prompts' examples: an item copying one is rejected


class QualityFilter:
    def __init__(self, config: FilterConfig | None = None) -> None:
        self.config = config or FilterConfig()
        keywords = [k.lower() for k in read_phrase_list(self.config.keywords_file)]
        # Latin keywords match whole words only ("coo" must not match "cooking"); CJK ones anywhere.
        latin = [k for k in keywords if k.isascii()]
        self.cjk_keywords = [k for k in keywords if not k.isascii()]
        self.latin_keywords = re.compile(
            r"(?<![a-z0-9_])(?:" + "|".join(re.escape(k) for k in sorted(latin, key=len, reverse=True)) + r")(?:s|es)?(?![a-z0-9_])"
        ) if latin else None
        self.leakage = [p.lower() for p in read_phrase_list(self.config.leakage_file)]
        self.counts: Counter = Counter({rule: 0 for rule in RULES})
        self.example_grams = [shingles(str(e.get(key, ""))) for e in self.config.few_shot_examples
                              for key in ("question", "answer")]

    def copies_an_example(self, question: str, answer: str) -> bool:
        return any(jaccard(shingles(text), grams) >= NEAR_DUPLICATE_THRESHOLD
                   for text in (question, answer) for grams in self.example_grams)

    def verdict(self, item: object, difficulty: str, source: str) -> str | None:
        """The name of the first rule the item breaks, or None when it passes (not counted)."""
        if not isinstance(item, dict):
            return "format"
        question, answer, topic = item.get("question"), item.get("answer"), item.get("topic", "")
        if not (isinstance(question, str) and isinstance(answer, str) and isinstance(topic, str)
                and question.strip() and answer.strip()):
            return "format"
        if self.copies_an_example(question, answer):
            return "few_shot_copy"
        if normalize(answer) == normalize(question) or normalize(question) in normalize(answer)[:len(normalize(question))] and len(answer) < 2 * len(question):
            return "same_as_question"
        lowered = (question + "\n" + answer).lower()
        if any(p in lowered for p in self.leakage):
            return "leakage"
        low, high = self.config.answer_bounds[difficulty]
        if not (low <= len(answer.strip()) <= high and QUESTION_BOUNDS[0] <= len(question.strip()) <= QUESTION_BOUNDS[1]):
            return "length"
        if not (any(k in lowered for k in self.cjk_keywords)
                or (self.latin_keywords is not None and self.latin_keywords.search(lowered))):
            return "terminology"
        if grounding_score(answer, source) < self.config.grounding_threshold:
            return "grounding"
        return None

    def check(self, item: object, difficulty: str, source: str) -> str | None:
        """Like `verdict`, and counts the rejection."""
        rule = self.verdict(item, difficulty, source)
        if rule:
            self.counts[rule] += 1
        return rule

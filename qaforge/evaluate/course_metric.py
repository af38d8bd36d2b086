"""The course metric: `rouge_score.RougeScorer(["rougeL"])` over jieba words joined by spaces.

This is what the course's public grader imitation and the original project's training script compute.
rouge_score's default tokenizer lower-cases the text and keeps only runs of [a-z0-9]; everything else,
Chinese included, is a separator. So the score is the ROUGE-L of the *English keywords and numbers*
alone: "CUDA 核函数 使用 __global__ 声明 warp 有 32 个 线程" is scored as [cuda, global, warp, 32].
That is why the original course project's system prompt asks the model to include English keywords, and why a
question-as-answer baseline scores high on it (questions repeat the answer's English terms).
"""

from __future__ import annotations

from functools import lru_cache

from rouge_score import rouge_scorer

from qaforge.evaluate.rouge import segment

WHAT_IT_IGNORES = (
    "The course metric is rouge_score's ROUGE-L over jieba words; its tokenizer keeps only [a-z0-9] runs, "
    "so every Chinese character and all punctuation is ignored: it measures English-keyword and number overlap only."
)


@lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"])  # no stemmer, default tokenizer: as the course uses it


def course_tokens(text: str, segmented: list[str] | None = None) -> list[str]:
    """The tokens the course metric actually compares (after jieba and rouge_score's tokenizer)."""
    words = segmented if segmented is not None else segment(text)
    return _scorer()._tokenizer.tokenize(" ".join(words))


def course_rouge_l_segmented(hyp_tokens: list[str], ref_tokens: list[str]) -> float:
    """Course ROUGE-L F-measure from jieba tokens (0.0 when either side has no Latin/digit token)."""
    return float(_scorer().score(" ".join(ref_tokens), " ".join(hyp_tokens))["rougeL"].fmeasure)


def course_rouge_l(prediction: str, reference: str) -> float:
    """Course ROUGE-L F-measure of one prediction."""
    return course_rouge_l_segmented(segment(prediction), segment(reference))

"""Chat-format helpers shared by every stage (train, eval, serve).

The engine sees token ids only; everything about messages, system prompts and
think blocks lives here, at the edges.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

# The course grader's default system prompt (part of its contract, docs/serving.md).
DEFAULT_SYSTEM_PROMPT = (
    "你是一位精通GPU体系结构、CUDA编程、Triton、cuTile、Tilelang算子开发的顶级技术专家，"
    "你的回答详细准确，并且尽量包含回答中的英文关键词。"
)

THINK_TAGS = ("<think>", "</think>")
THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
# An unterminated think block (generation cut by max_tokens) hides everything after it.
OPEN_THINK = re.compile(r"<think>.*\Z", re.DOTALL)
SPECIAL_TOKEN = re.compile(r"<\|[a-z_]+\|>")
# What a special token looks like before its last characters arrive (a stream holds it back).
PARTIAL_SPECIAL_TOKEN = re.compile(r"<\|[a-z_]*\|?")


def build_messages(question: str, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
                   answer: str | None = None) -> list[dict[str, str]]:
    """System + user (+ assistant) messages in the OpenAI / HF chat format."""
    messages: list[dict[str, str]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": question})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """Render messages with the model's chat template, non-thinking mode, ready for generation."""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )


def prompt_token_ids(tokenizer: Any, question: str,
                     system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> list[int]:
    """Token ids of the generation prompt for one question (what the engine is fed)."""
    return prompts_token_ids(tokenizer, [question], system_prompt)[0]


def prompts_token_ids(tokenizer: Any, questions: Sequence[str],
                      system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> list[list[int]]:
    """`prompt_token_ids` for many questions, tokenized in one batch call: the same ids, and for the
    grader's thousand-question /predict a measurable part of its wall time less."""
    texts = [render_prompt(tokenizer, build_messages(q, system_prompt)) for q in questions]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def strip_hidden(text: str) -> str:
    """The text without think blocks (closed or cut off), stray `</think>` tags and special tokens."""
    text = THINK_BLOCK.sub("", text)
    text = OPEN_THINK.sub("", text)
    text = text.replace(THINK_TAGS[1], "")
    return SPECIAL_TOKEN.sub("", text)


def clean_answer(text: str) -> str:
    """Plain-text answer: no think block (closed or cut off), no special tokens, trimmed."""
    return strip_hidden(text).strip()
